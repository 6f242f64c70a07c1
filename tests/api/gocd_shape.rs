//! Our answers against GoCD's own: the example responses GoCD documents (stored in
//! `tests/api/fixtures/gocd/`, each file's source in the README there) are what existing API
//! clients and build monitors were written against, so every key path of GoCD's example must
//! be in our answer, with the same JSON type.
//!
//! The rules, from GoCD's example (theirs) to our answer (ours):
//! - a `null` on either side matches anything (GoCD's example shows `null` where a value may be
//!   absent, and we may have nothing to say where GoCD's example had something);
//! - an object: every key of theirs must be in ours, compared in turn; keys only we have are
//!   fine (a superset is compatible);
//! - an array: every element of ours is compared with the first element of theirs; an empty
//!   array in ours is allowed, but nothing under it was checked, and the report says so;
//! - anything else: the same JSON type (a number is a number, whether `1` or `1.0`).
//!
//! A documented departure is opted out by its path, `[]` standing for any index
//! (`_embedded.pipelines[]._embedded.instances[].scheduled_at`); the path and all below it go
//! unchecked. An opt-out that names no path of GoCD's example fails, so none outlives its cause.

use std::path::PathBuf;

use serde_json::Value;

/// What a comparison found: where ours departs from GoCD's example, and what it could not
/// check (an empty array in ours, or in theirs).
#[derive(Debug, Default, PartialEq)]
pub struct ShapeReport {
    pub problems: Vec<String>,
    pub not_checked: Vec<String>,
}

/// GoCD's documented example `tests/api/fixtures/gocd/{fixture}`, parsed.
pub fn gocd_fixture(fixture: &str) -> Value {
    let path = fixtures_dir().join(fixture);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("GoCD fixture {} unreadable: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("GoCD fixture {} is not JSON: {e}", path.display()))
}

/// Fails, listing every missing key path and type mismatch, unless `ours` has the shape of
/// GoCD's example `fixture`.
pub fn assert_same_shape(fixture: &str, ours: &Value) {
    assert_same_shape_except(fixture, ours, &[]);
}

/// As [`assert_same_shape`], leaving unchecked the paths in `except` (documented departures).
pub fn assert_same_shape_except(fixture: &str, ours: &Value, except: &[&str]) {
    let report = shape_differences(&gocd_fixture(fixture), ours, except);
    if !report.not_checked.is_empty() {
        eprintln!("{fixture}: not checked: {}", report.not_checked.join("; "));
    }
    assert!(
        report.problems.is_empty(),
        "our answer departs from GoCD's example {fixture}:\n  {}\n(our answer: {ours})",
        report.problems.join("\n  ")
    );
}

/// The comparison itself, panicking on nothing.
pub fn shape_differences(theirs: &Value, ours: &Value, except: &[&str]) -> ShapeReport {
    let mut walk = Walk {
        except,
        used: vec![false; except.len()],
        report: ShapeReport::default(),
    };
    walk.compare(theirs, ours, &mut String::new(), &mut String::new());
    for (entry, used) in except.iter().zip(&walk.used) {
        if !used {
            walk.report
                .problems
                .push(format!("opt-out {entry}: no such path in GoCD's example"));
        }
    }
    walk.report
}

struct Walk<'a> {
    except: &'a [&'a str],
    used: Vec<bool>,
    report: ShapeReport,
}

impl Walk<'_> {
    /// `path` names the value as reported (`a.b[2].c`); `pattern` as opt-outs name it (`a.b[].c`).
    fn compare(&mut self, theirs: &Value, ours: &Value, path: &mut String, pattern: &mut String) {
        if self.opted_out(path, pattern) {
            return;
        }
        match (theirs, ours) {
            (Value::Null, _) | (_, Value::Null) => {}
            (Value::Object(theirs), Value::Object(ours)) => {
                for (key, their_value) in theirs {
                    let (path_len, pattern_len) = (path.len(), pattern.len());
                    for name in [&mut *path, &mut *pattern] {
                        if !name.is_empty() {
                            name.push('.');
                        }
                        name.push_str(key);
                    }
                    match ours.get(key) {
                        Some(our_value) => self.compare(their_value, our_value, path, pattern),
                        None if self.opted_out(path, pattern) => {}
                        None => self.report.problems.push(format!(
                            "{path}: GoCD has {}, ours has no such key",
                            type_name(their_value)
                        )),
                    }
                    path.truncate(path_len);
                    pattern.truncate(pattern_len);
                }
            }
            (Value::Array(theirs), Value::Array(ours)) => match (theirs.first(), ours.is_empty()) {
                (None, _) => self
                    .report
                    .not_checked
                    .push(format!("{}: GoCD's example array is empty", shown(path))),
                (Some(_), true) => self
                    .report
                    .not_checked
                    .push(format!("{}: our array is empty", shown(path))),
                (Some(first), false) => {
                    let (path_len, pattern_len) = (path.len(), pattern.len());
                    pattern.push_str("[]");
                    for (index, our_element) in ours.iter().enumerate() {
                        path.push_str(&format!("[{index}]"));
                        self.compare(first, our_element, path, pattern);
                        path.truncate(path_len);
                    }
                    pattern.truncate(pattern_len);
                }
            },
            _ if type_name(theirs) == type_name(ours) => {}
            _ => self.report.problems.push(format!(
                "{}: GoCD has {}, ours {}",
                shown(path),
                type_name(theirs),
                type_name(ours)
            )),
        }
    }

    /// Whether an opt-out names this path (the opt-out is then used).
    fn opted_out(&mut self, path: &str, pattern: &str) -> bool {
        match self.except.iter().position(|e| *e == path || *e == pattern) {
            Some(at) => {
                self.used[at] = true;
                true
            }
            None => false,
        }
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "(the whole answer)"
    } else {
        path
    }
}

fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/api/fixtures/gocd")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(theirs: Value, ours: Value) -> Vec<String> {
        shape_differences(&theirs, &ours, &[]).problems
    }

    #[test]
    fn a_missing_key_fails_with_its_path() {
        let theirs = json!({"_embedded": {"pipelines": [{"name": "up42", "locked": false}]}});
        let ours = json!({"_embedded": {"pipelines": [{"name": "up42"}]}});
        assert_eq!(
            problems(theirs, ours),
            ["_embedded.pipelines[0].locked: GoCD has boolean, ours has no such key"]
        );
    }

    #[test]
    fn a_type_mismatch_fails_with_both_types() {
        let theirs = json!({"instances": [{"scheduled_at": "2018-11-21T09:43:07Z"}]});
        let ours = json!({"instances": [{"scheduled_at": 1542793387000_i64}]});
        assert_eq!(
            problems(theirs, ours),
            ["instances[0].scheduled_at: GoCD has string, ours number"]
        );
    }

    #[test]
    fn a_superset_passes() {
        let theirs = json!({"name": "up42", "counter": 1, "stages": [{"name": "s", "jobs": []}]});
        let ours = json!({
            "name": "up42", "counter": 2, "ours_only": {"x": 1},
            "stages": [{"name": "a", "jobs": [{"name": "j"}], "extra": true}, {"name": "b", "jobs": []}]
        });
        let report = shape_differences(&theirs, &ours, &[]);
        assert!(report.problems.is_empty(), "{report:?}");
    }

    #[test]
    fn every_problem_is_listed_not_just_the_first() {
        let theirs = json!({"a": "x", "b": 1, "c": {"d": true}});
        let ours = json!({"a": 1, "c": {"d": "yes"}});
        assert_eq!(
            problems(theirs, ours),
            [
                "a: GoCD has string, ours number",
                "b: GoCD has number, ours has no such key",
                "c.d: GoCD has boolean, ours string",
            ]
        );
    }

    #[test]
    fn null_on_either_side_matches_anything() {
        assert!(problems(json!({"paused_by": null}), json!({"paused_by": "admin"})).is_empty());
        assert!(problems(json!({"paused_by": "admin"}), json!({"paused_by": null})).is_empty());
        assert!(problems(json!({"data": {"k": 1}}), json!({"data": null})).is_empty());
    }

    #[test]
    fn every_element_of_ours_is_compared_with_the_first_of_theirs() {
        let theirs = json!([{"counter": 1}, {"counter": "ignored: only the first counts"}]);
        let ours = json!([{"counter": 1}, {"counter": "2"}, {}]);
        assert_eq!(
            problems(theirs, ours),
            [
                "[1].counter: GoCD has number, ours string",
                "[2].counter: GoCD has number, ours has no such key"
            ]
        );
    }

    #[test]
    fn an_empty_array_in_ours_passes_and_is_reported_not_checked() {
        let report = shape_differences(
            &json!({"pipelines": [{"name": "p"}]}),
            &json!({"pipelines": []}),
            &[],
        );
        assert_eq!(
            report,
            ShapeReport {
                problems: vec![],
                not_checked: vec!["pipelines: our array is empty".into()]
            }
        );
    }

    #[test]
    fn a_different_top_level_type_fails() {
        assert_eq!(
            problems(json!({"message": "m"}), json!(["m"])),
            ["(the whole answer): GoCD has object, ours array"]
        );
    }

    #[test]
    fn an_opt_out_skips_its_path_and_all_below_for_every_index() {
        let theirs =
            json!({"pipelines": [{"name": "p", "pause_info": {"paused": false}, "at": "t"}]});
        let ours =
            json!({"pipelines": [{"name": "p", "at": 1}, {"name": "q", "pause_info": 3, "at": 2}]});
        let report = shape_differences(
            &theirs,
            &ours,
            &["pipelines[].pause_info", "pipelines[1].at"],
        );
        assert_eq!(
            report.problems,
            ["pipelines[0].at: GoCD has string, ours number"]
        );
    }

    #[test]
    fn an_opt_out_naming_no_path_of_gocds_example_fails() {
        let report = shape_differences(&json!({"name": "p"}), &json!({"name": "p"}), &["nmae"]);
        assert_eq!(
            report.problems,
            ["opt-out nmae: no such path in GoCD's example"]
        );
    }

    #[test]
    #[should_panic(expected = "message: GoCD has string, ours has no such key")]
    fn the_assertion_fails_on_a_fixture_with_the_listed_problems() {
        assert_same_shape("pause.v1.json", &json!({"msg": "paused"}));
    }

    #[test]
    fn the_assertion_passes_a_fixture_with_an_answer_of_its_shape() {
        assert_same_shape(
            "stage_cancel.v3.json",
            &json!({"message": "Stage cancelled successfully."}),
        );
        assert_same_shape_except(
            "pipeline_status.v1.json",
            &json!({"paused": false, "paused_cause": null, "paused_by": null, "locked": false}),
            &["schedulable"],
        );
    }

    /// Every JSON fixture parses, has its own shape, and has its source in the README.
    #[test]
    fn every_fixture_is_json_and_named_in_the_readme() {
        let readme =
            std::fs::read_to_string(fixtures_dir().join("README.md")).expect("the fixtures README");
        let mut seen = 0;
        for entry in std::fs::read_dir(fixtures_dir()).expect("the fixtures folder") {
            let name = entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name == "README.md" {
                continue;
            }
            assert!(
                readme.contains(&format!("`{name}`")),
                "{name} is not described in the README"
            );
            if name.ends_with(".json") {
                let fixture = gocd_fixture(&name);
                assert_eq!(
                    shape_differences(&fixture, &fixture, &[]).problems,
                    Vec::<String>::new(),
                    "{name}"
                );
                seen += 1;
            }
        }
        assert!(seen > 0, "no JSON fixtures found");
    }
}
