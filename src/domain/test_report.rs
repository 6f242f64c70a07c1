//! JUnit XML test reports (the artifacts issue): a job's `test` artifacts are summarised as
//! they are stored, since how many tests ran and which failed is what people look for first.
//! Read as a stream of XML events, so a report of any size is never held whole; counted from
//! the `<testcase>` elements themselves (the suites' own counts are often missing or stale).

use std::io::BufRead;

use quick_xml::events::{BytesStart, Event};
use serde::{Deserialize, Serialize};

/// At most this many failing tests are named per report (the counts are complete).
pub const FAILING_NAMED: usize = 100;
/// A failure's message is cut to this many characters (its first line).
const MESSAGE_SHOWN: usize = 300;

/// What one report (or several, added up) says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestSummary {
    pub tests: u64,
    pub failures: u64,
    pub errors: u64,
    pub skipped: u64,
    /// Failed or errored tests, in report order, at most [`FAILING_NAMED`].
    pub failing: Vec<FailedTest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTest {
    /// `classname.name`, or `name` alone.
    pub name: String,
    /// The first line of the failure's `message` (or its text), cut.
    pub message: String,
}

impl TestSummary {
    /// Tests that failed or errored.
    pub fn failed(&self) -> u64 {
        self.failures + self.errors
    }

    pub fn passed(&self) -> u64 {
        self.tests.saturating_sub(self.failed() + self.skipped)
    }

    /// Adds `other` in (the failing names up to [`FAILING_NAMED`]).
    pub fn add(&mut self, other: &TestSummary) {
        self.tests += other.tests;
        self.failures += other.failures;
        self.errors += other.errors;
        self.skipped += other.skipped;
        let room = FAILING_NAMED.saturating_sub(self.failing.len());
        self.failing
            .extend(other.failing.iter().take(room).cloned());
    }
}

/// The summary of a JUnit XML report; `Ok(None)` for XML that is not one (its root is not
/// `testsuites` or `testsuite`), `Err` for text that is not well-formed XML.
pub fn read_junit<R: BufRead>(input: R) -> Result<Option<TestSummary>, String> {
    let mut reader = quick_xml::Reader::from_reader(input);
    let mut buffer = Vec::new();
    let mut summary = TestSummary::default();
    let mut root_seen = false;
    // The test case being read: its name, and whether it was counted as failed or skipped.
    let mut case: Option<(String, bool)> = None;
    // Inside a `<failure>`/`<error>` without a message: its text is the message.
    let mut wants_text = false;
    loop {
        let event = reader.read_event_into(&mut buffer).map_err(|e| {
            format!(
                "not well-formed XML at byte {}: {e}",
                reader.error_position()
            )
        })?;
        match event {
            Event::Start(ref element) | Event::Empty(ref element) => {
                let empty = matches!(event, Event::Empty(_));
                let name = element.local_name();
                let name = name.as_ref();
                if !root_seen {
                    root_seen = true;
                    if name != b"testsuites" && name != b"testsuite" {
                        return Ok(None);
                    }
                    continue;
                }
                match name {
                    b"testcase" => {
                        summary.tests += 1;
                        let class = attribute(element, b"classname");
                        let test = attribute(element, b"name");
                        let full = match (class.is_empty(), test.is_empty()) {
                            (false, false) => format!("{class}.{test}"),
                            (true, _) => test,
                            (false, true) => class,
                        };
                        case = (!empty).then_some((full, false));
                    }
                    b"failure" | b"error" | b"skipped" => {
                        if let Some((test, counted)) = case.as_mut().filter(|(_, c)| !*c) {
                            *counted = true;
                            if name == b"skipped" {
                                summary.skipped += 1;
                            } else {
                                if name == b"failure" {
                                    summary.failures += 1;
                                } else {
                                    summary.errors += 1;
                                }
                                if summary.failing.len() < FAILING_NAMED {
                                    let message = first_line(&attribute(element, b"message"));
                                    wants_text = message.is_empty() && !empty;
                                    summary.failing.push(FailedTest {
                                        name: test.clone(),
                                        message,
                                    });
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            Event::Text(text) if wants_text => {
                if let Ok(text) = text.unescape() {
                    let line = first_line(&text);
                    if !line.is_empty()
                        && let Some(last) = summary.failing.last_mut()
                    {
                        last.message = line;
                        wants_text = false;
                    }
                }
            }
            Event::CData(text) if wants_text => {
                let line = first_line(&String::from_utf8_lossy(&text));
                if !line.is_empty()
                    && let Some(last) = summary.failing.last_mut()
                {
                    last.message = line;
                    wants_text = false;
                }
            }
            Event::End(element) => match element.local_name().as_ref() {
                b"testcase" => case = None,
                b"failure" | b"error" => wants_text = false,
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
        buffer.clear();
    }
    Ok(root_seen.then_some(summary))
}

fn attribute(element: &BytesStart, key: &[u8]) -> String {
    element
        .attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key)
        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()))
        .unwrap_or_default()
}

fn first_line(text: &str) -> String {
    let line = text.trim().lines().next().unwrap_or("").trim();
    let mut cut: String = line.chars().take(MESSAGE_SHOWN).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What pytest's `--junitxml` writes, in its shape.
    const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.03"><testcase classname="test_shop" name="test_add" time="0.001" /><testcase classname="test_shop" name="test_total" time="0.002"><failure message="assert 3 == 4&#10; +  where 3 = total()">def test_total():
&gt;       assert total() == 4
E       assert 3 == 4</failure></testcase><testcase classname="test_shop" name="test_later" time="0.000"><skipped type="pytest.skip" message="not yet">skipped</skipped></testcase><testcase classname="test_shop" name="test_io" time="0.001"><error message="">OSError: disk &lt;full&gt;
more</error></testcase></testsuite></testsuites>"#;

    #[test]
    fn a_pytest_report_counts_its_cases_and_names_the_failing_ones() {
        let summary = read_junit(PYTEST.as_bytes()).unwrap().unwrap();
        assert_eq!(
            (
                summary.tests,
                summary.failures,
                summary.errors,
                summary.skipped
            ),
            (4, 1, 1, 1)
        );
        assert_eq!(summary.passed(), 1);
        assert_eq!(
            summary.failing,
            [
                FailedTest {
                    name: "test_shop.test_total".into(),
                    message: "assert 3 == 4".into()
                },
                FailedTest {
                    name: "test_shop.test_io".into(),
                    message: "OSError: disk <full>".into()
                },
            ]
        );
    }

    #[test]
    fn other_xml_is_no_report_and_broken_xml_says_where() {
        assert_eq!(
            read_junit("<project><testcase/></project>".as_bytes()),
            Ok(None)
        );
        assert_eq!(read_junit("".as_bytes()), Ok(None));
        assert!(read_junit("<testsuite><testcase></testsuite>".as_bytes()).is_err());
        let bare = read_junit(r#"<testsuite><testcase name="a"/></testsuite>"#.as_bytes());
        assert_eq!(bare.unwrap().unwrap().tests, 1);
    }

    #[test]
    fn summaries_add_up_and_name_at_most_the_limit() {
        let mut many = String::from("<testsuite>");
        for i in 0..150 {
            many.push_str(&format!(
                r#"<testcase name="t{i}"><failure message="m{i}"/></testcase>"#
            ));
        }
        many.push_str("</testsuite>");
        let one = read_junit(many.as_bytes()).unwrap().unwrap();
        assert_eq!((one.failures, one.failing.len()), (150, FAILING_NAMED));
        let mut total = TestSummary::default();
        total.add(&one);
        total.add(&read_junit(PYTEST.as_bytes()).unwrap().unwrap());
        assert_eq!(
            (total.tests, total.failed(), total.failing.len()),
            (154, 152, FAILING_NAMED)
        );
    }
}
