//! The Python that runs the Kazoo scripts: `$TASKCLUSTER_PYTHON`, else the venv that
//! `scripts/deps.sh` creates where the system Python refuses pip (PEP 668), else `python3`.

use std::path::PathBuf;
use std::process::Command;

pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("TASKCLUSTER_PYTHON") {
        return PathBuf::from(python);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")));
    let venv = cache.map(|c| c.join("taskcluster/kazoo-venv/bin/python"));
    venv.filter(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("python3"))
}

/// Fails the test with how to install Kazoo when it is missing; `why` says what needs it.
pub fn require_kazoo(why: &str) {
    let python = python();
    let probe = Command::new(&python).args(["-c", "import kazoo.client"]).output();
    let missing = match probe {
        Ok(p) if p.status.success() => return,
        Ok(p) => String::from_utf8_lossy(&p.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    panic!(
        "{why} need the Python Kazoo library in {}: run `bash scripts/deps.sh` \
         (or `python3 -m pip install kazoo==2.11.0`)\n{missing}",
        python.display()
    );
}
