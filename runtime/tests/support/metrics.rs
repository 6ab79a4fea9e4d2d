//! Reading `/metrics`, `/healthz` and `/readyz` of a master or worker over plain HTTP/1.1.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Status code and body of `GET <path>`, or None when nothing answers.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_string() };
    Some((code, body))
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// One scrape of Prometheus text: sample key (`name` or `name{labels}`) to value.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    samples: HashMap<String, f64>,
}

impl Metrics {
    pub fn scrape(addr: &str) -> Option<Metrics> {
        let (code, body) = http_get(addr, "/metrics")?;
        (code == 200).then(|| Metrics::parse(&body))
    }

    pub fn parse(text: &str) -> Metrics {
        let mut samples = HashMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
            let Some((key, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.trim().parse::<f64>() else { continue };
            samples.insert(key.replace(' ', ""), value);
        }
        Metrics { samples }
    }

    /// The value of a sample, e.g. `taskcluster_worker_tasks_total{outcome="failed"}`;
    /// label order in the key does not matter.
    pub fn get(&self, key: &str) -> Option<f64> {
        let wanted = normalise(key);
        self.samples.iter().find(|(k, _)| normalise(k) == wanted).map(|(_, v)| *v)
    }

    /// A counter's value; a labelled counter that was never incremented has no sample yet and
    /// reads 0. Callers that test "did not rise" first check the family exists elsewhere.
    pub fn counter(&self, key: &str) -> f64 {
        self.get(key).unwrap_or(0.0)
    }

    /// Whether any sample of the metric family `name` is present.
    pub fn has_family(&self, name: &str) -> bool {
        self.samples.keys().any(|k| k == name || k.starts_with(&format!("{name}{{")))
    }

    pub fn keys(&self) -> Vec<&String> {
        self.samples.keys().collect()
    }
}

fn normalise(key: &str) -> String {
    match key.split_once('{') {
        None => key.to_string(),
        Some((name, labels)) => {
            let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).collect();
            labels.sort_unstable();
            format!("{name}{{{}}}", labels.join(","))
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE taskcluster_master_is_leader gauge\ntaskcluster_master_is_leader 1\n\
             taskcluster_worker_tasks_total{outcome=\"failed\",a=\"b\"} 3\n# EOF\n",
        );
        assert_eq!(m.get("taskcluster_master_is_leader"), Some(1.0));
        assert_eq!(m.get("taskcluster_worker_tasks_total{a=\"b\",outcome=\"failed\"}"), Some(3.0));
        assert_eq!(m.get("missing"), None);
    }
}
