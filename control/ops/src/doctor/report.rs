//! What a check found and how the report is printed: one block per check for people, one
//! JSON object for machines (`--json`).

use std::io::Write;

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but needs attention (a backlog, a recommended setting, a leftover).
    Warn,
    /// Broken, or about to break: the exit code is 1.
    Fail,
}

impl Status {
    /// `ok`, `warn` or `fail`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

/// One check's result: an id, a verdict, a one-line finding and, unless it is ok, the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The check id, e.g. `kek.match`.
    pub id: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found, on one line; never a secret.
    pub finding: String,
    /// What to do about it (`None` when the check is ok).
    pub fix: Option<String>,
}

/// Collects a check's observations; the worst one decides its status.
#[derive(Debug)]
pub(crate) struct Findings {
    id: &'static str,
    notes: Vec<String>,
    problems: Vec<(Status, String, String)>,
}

impl Findings {
    pub(crate) fn new(id: &'static str) -> Self {
        Self {
            id,
            notes: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Something that is fine, reported when nothing else is.
    pub(crate) fn ok(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// Something that needs attention.
    pub(crate) fn warn(&mut self, finding: impl Into<String>, fix: impl Into<String>) {
        self.problems
            .push((Status::Warn, finding.into(), fix.into()));
    }

    /// Something broken.
    pub(crate) fn fail(&mut self, finding: impl Into<String>, fix: impl Into<String>) {
        self.problems
            .push((Status::Fail, finding.into(), fix.into()));
    }

    /// The check: failures first, then warnings, each fix once.
    pub(crate) fn finish(mut self) -> Check {
        self.problems
            .sort_by_key(|problem| std::cmp::Reverse(problem.0));
        let status = self
            .problems
            .first()
            .map_or(Status::Ok, |(status, _, _)| *status);
        if status == Status::Ok {
            let finding = if self.notes.is_empty() {
                "nothing to check".to_owned()
            } else {
                self.notes.join("; ")
            };
            return Check {
                id: self.id,
                status,
                finding: one_line(&finding),
                fix: None,
            };
        }
        let finding = self
            .problems
            .iter()
            .map(|(_, finding, _)| finding.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let mut fixes: Vec<&str> = Vec::new();
        for (_, _, fix) in &self.problems {
            if !fix.is_empty() && !fixes.contains(&fix.as_str()) {
                fixes.push(fix);
            }
        }
        Check {
            id: self.id,
            status,
            finding: one_line(&finding),
            fix: Some(one_line(&fixes.join("; "))),
        }
    }
}

/// A failed check built in one go (a check that could not run).
pub(crate) fn failed(
    id: &'static str,
    finding: impl Into<String>,
    fix: impl Into<String>,
) -> Check {
    let mut findings = Findings::new(id);
    findings.fail(finding, fix);
    findings.finish()
}

/// Line breaks (from error texts) become spaces, so every finding is one line.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many checks failed.
pub(crate) fn failed_count(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.status == Status::Fail).count()
}

/// The human report: `title`, a summary, then one block per check.
pub(crate) fn write_human(
    out: &mut dyn Write,
    title: &str,
    checks: &[Check],
) -> std::io::Result<()> {
    let failed = failed_count(checks);
    let warned = checks.iter().filter(|c| c.status == Status::Warn).count();
    writeln!(
        out,
        "{title}: {} checks, {failed} failed, {warned} warnings",
        checks.len()
    )?;
    for check in checks {
        let label = match check.status {
            Status::Ok => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        writeln!(out)?;
        writeln!(out, "{label}  {}", check.id)?;
        writeln!(out, "      {}", check.finding)?;
        if let Some(fix) = &check.fix {
            writeln!(out, "      fix: {fix}")?;
        }
    }
    Ok(())
}

/// The machine report: `{"checks":[{"id","status","finding","fix"}],"failed":n}`.
pub(crate) fn write_json(out: &mut dyn Write, checks: &[Check]) -> std::io::Result<()> {
    let body = serde_json::json!({
        "checks": checks
            .iter()
            .map(|check| serde_json::json!({
                "id": check.id,
                "status": check.status.as_str(),
                "finding": check.finding,
                "fix": check.fix,
            }))
            .collect::<Vec<_>>(),
        "failed": failed_count(checks),
    });
    writeln!(out, "{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_observation_decides_and_failures_come_first() {
        let mut findings = Findings::new("x.y");
        findings.ok("fine");
        findings.warn("a backlog", "wait");
        findings.fail("broken\nline", "repair");
        findings.warn("another", "wait");
        let check = findings.finish();
        assert_eq!(check.status, Status::Fail);
        assert_eq!(check.finding, "broken line; a backlog; another");
        assert_eq!(check.fix.as_deref(), Some("repair; wait"));
    }

    #[test]
    fn an_ok_check_reports_its_notes_and_no_fix() {
        let mut findings = Findings::new("x.y");
        findings.ok("one");
        findings.ok("two");
        let check = findings.finish();
        assert_eq!(check.status, Status::Ok);
        assert_eq!(check.finding, "one; two");
        assert_eq!(check.fix, None);
    }

    #[test]
    fn the_json_report_counts_failures() {
        let checks = vec![
            failed("a.b", "down", "start it"),
            Findings::new("c.d").finish(),
        ];
        let mut out = Vec::new();
        write_json(&mut out, &checks).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["failed"], 1);
        assert_eq!(value["checks"][0]["status"], "fail");
        assert_eq!(value["checks"][0]["fix"], "start it");
        assert_eq!(value["checks"][1]["fix"], serde_json::Value::Null);
    }
}
