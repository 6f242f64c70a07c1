//! Test artifacts with a real test runner: a real `ferrocd agent` runs pytest, which writes
//! its JUnit report during the job; the agent publishes it as a `test` artifact although the
//! tests failed, and the run page's Tests tab and the stage page say how many ran, failed and
//! were skipped, naming the failing test. The Artifacts tab lists the files with a zip of each
//! folder, and the job's own tab shows a published page in a sandboxed frame.

use std::io::Read;

use crate::agent_runtime::{KEY, enabled_agent};
use crate::helpers::{eventually, spawn_app_with};

/// A Python that has pytest (the agent's tasks find it on their PATH, or Debian's).
fn python_with_pytest() -> Option<&'static str> {
    ["python3", "/usr/bin/python3"].into_iter().find(|python| {
        std::process::Command::new(python)
            .args(["-m", "pytest", "--version"])
            .output()
            .is_ok_and(|out| out.status.success())
    })
}

const PIPELINE: &str = r#"format_version: 10
pipelines:
  shop:
    group: g
    stages:
      - test:
          jobs:
            unit:
              artifacts:
                - test: {source: reports/junit.xml, destination: reports}
                - build: {source: htmlcov}
              tabs:
                coverage: htmlcov/index.html
              tasks:
                - script: |
                    set -e
                    mkdir -p htmlcov reports
                    cat > test_shop.py <<'PY'
                    import pytest

                    def total():
                        return 3

                    def test_add():
                        assert 1 + 1 == 2

                    def test_total():
                        assert total() == 4

                    @pytest.mark.skip(reason="not yet")
                    def test_later():
                        pass
                    PY
                    printf '<html><body><h1>Coverage 87%%</h1><script>document.title="ran"</script></body></html>' > htmlcov/index.html
                    printf 'body{color:red}' > htmlcov/style.css
                    PYTHON -m pytest -p no:cacheprovider --junitxml=reports/junit.xml test_shop.py
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_real_test_runners_report_is_summarised_on_the_run_and_stage_pages() {
    let Some(python) = python_with_pytest() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: pytest must be installed (.ci/run installs python3-pytest)"
        );
        eprintln!("SKIPPED: no python3 with pytest on this machine (CI installs it)");
        return;
    };
    let app = spawn_app_with(|c| c.agent_registration_key = Some(KEY.into())).await;
    app.put_config("shop", &PIPELINE.replace("PYTHON", python))
        .await
        .expect(201);
    let _agent = enabled_agent(&app).await;
    app.post_json_ok("/go/api/pipelines/shop/schedule").await;
    let job = eventually("the test stage ended", || async {
        let stage = app.get("/go/api/stages/shop/1/test/1").await;
        (stage.status == 200
            && stage.body["result"].is_string()
            && stage.body["result"] != "Unknown")
            .then(|| stage.body["jobs"][0].clone())
    })
    .await;
    let build_id = job["id"].as_i64().unwrap();
    let log = String::from_utf8_lossy(&app.console(build_id, None).await.0).into_owned();
    assert_eq!(job["result"], "Failed", "pytest failed a test: {log}");
    assert!(log.contains("1 failed, 1 passed, 1 skipped"), "{log}");
    let listed = app
        .get(&format!("/api/builds/{build_id}/artifacts"))
        .await
        .expect(200);
    let kinds: Vec<String> = listed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            format!(
                "{} {}",
                f["path"].as_str().unwrap(),
                f["kind"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "htmlcov/index.html build",
            "htmlcov/style.css build",
            "reports/junit.xml test"
        ]
    );

    // The run page: Tests, Artifacts and the job's own tab.
    let page = app.get(&format!("/builds/{build_id}")).await;
    assert_eq!(page.status, 200);
    let html = String::from_utf8(page.bytes).unwrap();
    let tests = section(&html, "tab-tests");
    assert!(tests.contains("<b>3</b> tests: "), "{tests}");
    assert!(tests.contains("1 passed"), "{tests}");
    assert!(tests.contains("1 failed"), "{tests}");
    assert!(tests.contains("1 skipped"), "{tests}");
    assert!(tests.contains("test_shop.test_total"), "{tests}");
    assert!(tests.contains("assert 3 == 4"), "{tests}");
    let artifacts = section(&html, "tab-artifacts");
    assert!(
        artifacts.contains(r#"href="/files/shop/1/test/1/unit/htmlcov.zip""#),
        "{artifacts}"
    );
    assert!(
        artifacts.contains(r#"href="/files/shop/1/test/1/unit/reports/junit.xml""#),
        "{artifacts}"
    );
    assert!(
        html.contains(r#"<iframe class="artifact-tab" sandbox="" title="coverage" src="/tab/artifact/shop/1/test/1/unit/htmlcov/index.html">"#),
        "{html}"
    );

    // The stage page: per job and added up.
    let stage = app.get("/pipelines/shop/1/test/1").await;
    assert_eq!(stage.status, 200);
    let stage = &String::from_utf8(stage.bytes).unwrap();
    assert!(
        stage.contains("1 passed, <span class=\"failed-count\">1 failed</span>"),
        "{stage}"
    );
    assert!(
        section(stage, "stage-tests").contains("test_shop.test_total"),
        "{stage}"
    );

    // The folder as one zip, with the same bytes.
    let reply = app
        .client
        .get(app.url("/files/shop/1/test/1/unit/htmlcov.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.headers()["content-type"], "application/zip");
    assert_eq!(
        reply.headers()["content-disposition"],
        "attachment; filename=\"htmlcov.zip\""
    );
    let bytes = reply.bytes().await.unwrap();
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut names: Vec<String> = zip.file_names().map(|n| n.unwrap().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["htmlcov/index.html", "htmlcov/style.css"]);
    let mut css = String::new();
    zip.by_name("htmlcov/style.css")
        .unwrap()
        .read_to_string(&mut css)
        .unwrap();
    assert_eq!(css, "body{color:red}");
    let missing = app
        .client
        .get(app.url("/files/shop/1/test/1/unit/nothing.zip"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The tab's page: inline and typed, but a sandbox of its own whatever it holds.
    let tab = app
        .client
        .get(app.url("/tab/artifact/shop/1/test/1/unit/htmlcov/index.html"))
        .send()
        .await
        .unwrap();
    assert_eq!(tab.status(), 200);
    assert_eq!(tab.headers()["content-type"], "text/html");
    assert_eq!(tab.headers()["x-content-type-options"], "nosniff");
    let csp = tab.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("sandbox;"), "{csp}");
    assert!(csp.contains("frame-ancestors 'self'"), "{csp}");
    assert_eq!(tab.headers()["x-frame-options"], "SAMEORIGIN");
    assert!(tab.headers().get("content-disposition").is_none());
    assert!(tab.text().await.unwrap().contains("Coverage 87%"));
}

/// The markup of the element with `id` up to the next `<section` (or the end).
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[start..];
    let end = rest[1..].find("<section").map_or(rest.len(), |i| i + 1);
    &rest[..end]
}
