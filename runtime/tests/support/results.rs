//! The output of `submit --wait`: one `<task id>\t(ok|failed)\t<text>` line per task.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResultLine {
    pub id: String,
    pub ok: bool,
    /// The result (ok) or the failure message, unescaped.
    pub text: String,
}

impl ResultLine {
    /// Parses one line; panics on anything that does not follow the contract.
    pub fn parse(line: &str) -> ResultLine {
        let mut fields = line.splitn(3, '\t');
        let (Some(id), Some(outcome), Some(text)) = (fields.next(), fields.next(), fields.next()) else {
            panic!("result line {line:?} does not have the form <id>\\t<ok|failed>\\t<text>");
        };
        let ok = match outcome {
            "ok" => true,
            "failed" => false,
            other => panic!("result line {line:?} has outcome {other:?}, expected ok or failed"),
        };
        assert!(!id.is_empty(), "result line {line:?} has an empty task id");
        ResultLine { id: id.to_string(), ok, text: unescape(text) }
    }

    pub fn parse_all(stdout: &str) -> Vec<ResultLine> {
        stdout.lines().filter(|l| !l.is_empty()).map(ResultLine::parse).collect()
    }
}

/// Reverses the escaping of results: `\\`, `\t`, `\n`.
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some(other) => panic!("unknown escape \\{other} in result text {text:?}"),
            None => panic!("dangling backslash in result text {text:?}"),
        }
    }
    out
}

/// The seed handler: the payload's words in reverse order, upper-cased, joined by one space.
pub fn seed_result(payload: &str) -> String {
    payload.split_whitespace().rev().map(str::to_uppercase).collect::<Vec<_>>().join(" ")
}

/// Checks the core invariants for one client: exactly one line per submitted task, all ok,
/// and the results are exactly the expected ones (as a multiset).
pub fn assert_exactly_one_ok_result_each(client: &str, lines: &[ResultLine], expected: &[String]) {
    let ids: BTreeSet<&str> = lines.iter().map(|l| l.id.as_str()).collect();
    assert_eq!(ids.len(), lines.len(), "{client} got more than one result for some task: {lines:#?}");
    let failed: Vec<&ResultLine> = lines.iter().filter(|l| !l.ok).collect();
    assert!(failed.is_empty(), "{client} got failures: {failed:#?}");
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for line in lines {
        *got.entry(line.text.as_str()).or_default() += 1;
    }
    let mut want: BTreeMap<&str, usize> = BTreeMap::new();
    for result in expected {
        *want.entry(result.as_str()).or_default() += 1;
    }
    let missing: Vec<_> = want.iter().filter(|(r, n)| got.get(*r) != Some(n)).collect();
    let unexpected: Vec<_> = got.iter().filter(|(r, _)| !want.contains_key(*r)).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{client}: results differ from the submitted tasks ({} lines for {} tasks)\nmissing or miscounted: {missing:?}\nunexpected: {unexpected:?}",
        lines.len(),
        expected.len()
    );
}

/// `n` distinct payloads of three words, e.g. `alpha word7 item7`.
pub fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} word{i} item{i}")).collect()
}

pub fn seed_results(payloads: &[String]) -> Vec<String> {
    payloads.iter().map(|p| seed_result(p)).collect()
}

/// The client exited 0 without panicking and printed exactly one successful seed result per
/// payload. Returns its result lines.
pub async fn assert_client_succeeded(client: &mut super::Proc, payloads: &[String]) -> Vec<ResultLine> {
    let code = client.exit_code(super::LONG).await;
    assert_eq!(code, 0, "{} should exit 0\n{}", client.name, client.describe());
    client.assert_no_panic();
    let lines = ResultLine::parse_all(&client.stdout());
    assert_exactly_one_ok_result_each(&client.name, &lines, &seed_results(payloads));
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_unescapes() {
        let line = ResultLine::parse("t1-2\tok\ta\\tb\\nc\\\\d");
        assert_eq!(line, ResultLine { id: "t1-2".into(), ok: true, text: "a\tb\nc\\d".into() });
        assert!(!ResultLine::parse("x\tfailed\tboom").ok);
        assert_eq!(seed_result("  alpha beta\tgamma "), "GAMMA BETA ALPHA");
    }
}
