//! Artifacts (the artifacts issue): the files a job publishes. A path and a checksum are
//! parsed once, where they come in, so the store only ever sees a path confined to the job's
//! folder and a well-formed SHA-256.

use std::fmt;

pub use super::pipeline_config::ArtifactKind;

/// A file's path inside its job's artifacts: relative, `/`-separated, no `.` or `..`
/// segment, no empty segment, no backslash or control character, at most 1,024 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArtifactPath(String);

impl ArtifactPath {
    pub fn parse(raw: &str) -> Result<ArtifactPath, String> {
        let refuse = |why: &str| Err(format!("artifact path {raw:?}: {why}"));
        if raw.is_empty() {
            return refuse("empty");
        }
        if raw.len() > 1024 {
            return refuse("longer than 1024 bytes");
        }
        if raw.starts_with('/') {
            return refuse("absolute; paths are relative to the job's artifacts");
        }
        if raw.contains('\\') || raw.chars().any(char::is_control) {
            return refuse("holds a backslash or a control character");
        }
        for segment in raw.split('/') {
            match segment {
                "" => return refuse("has an empty segment (`//` or a trailing `/`)"),
                "." | ".." => return refuse("has a `.` or `..` segment"),
                _ => {}
            }
        }
        Ok(ArtifactPath(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path with its case folded: two files whose names differ only in case are one
    /// file on some disks (and in a browser's download), so a job may have one of them.
    pub fn folded(&self) -> String {
        self.0.to_lowercase()
    }
}

impl fmt::Display for ArtifactPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A SHA-256, as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(raw: &str) -> Result<Sha256Hex, String> {
        let lower = raw.trim().to_ascii_lowercase();
        if lower.len() == 64 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Sha256Hex(lower))
        } else {
            Err(format!("{raw:?} is not a SHA-256 (64 hex digits)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored artifact file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactFile {
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub created_at: i64,
    /// Published by a `build` or a `test` artifact rule.
    pub kind: ArtifactKind,
}

/// Where a fetch task takes its files from: a job run (a copy's original) and its address
/// `pipeline/pc/stage/sc/job`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOrigin {
    pub build_id: i64,
    pub locator: String,
}

/// One file a fetch task downloads: the artifact's path, what it must be, and where it goes
/// (relative to the job's sandbox).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FetchFile {
    pub path: String,
    pub size: i64,
    pub sha256: String,
    pub save_as: String,
}

/// The files a fetch of `source` (a file when `is_file`, else a folder) takes from `files`,
/// each saved as GoCD does: a file as `destination/NAME`, a folder's files as
/// `destination/FOLDER/…`. Says why when `source` names nothing stored.
pub fn fetch_files(
    source: &str,
    is_file: bool,
    destination: Option<&str>,
    files: &[ArtifactFile],
) -> Result<Vec<FetchFile>, String> {
    let source =
        ArtifactPath::parse(source.trim().trim_matches('/')).map_err(|e| format!("source: {e}"))?;
    let destination = destination
        .map(|d| d.trim().trim_end_matches('/'))
        .filter(|d| !d.is_empty() && *d != ".");
    let parent_len = source.as_str().rfind('/').map(|i| i + 1).unwrap_or(0);
    let folder = format!("{source}/");
    let picked: Vec<FetchFile> = files
        .iter()
        .filter(|f| {
            if is_file {
                f.path == source.as_str()
            } else {
                f.path.starts_with(&folder)
            }
        })
        .map(|f| {
            let below = &f.path[parent_len..];
            FetchFile {
                path: f.path.clone(),
                size: f.size,
                sha256: f.sha256.clone(),
                save_as: match destination {
                    Some(d) => format!("{d}/{below}"),
                    None => below.to_string(),
                },
            }
        })
        .collect();
    if picked.is_empty() {
        let is_a_file = files.iter().any(|f| f.path == source.as_str());
        let is_a_folder = files.iter().any(|f| f.path.starts_with(&folder));
        return Err(match (is_file, is_a_file, is_a_folder) {
            (true, _, true) => {
                format!("{source} is a folder of artifacts, not a file (is_file: false fetches it)")
            }
            (false, true, _) => {
                format!("{source} is an artifact file, not a folder (is_file: true fetches it)")
            }
            (true, _, _) => format!("no artifact file {source}"),
            (false, _, _) => format!("no artifact folder {source}"),
        });
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(paths: &[&str]) -> Vec<ArtifactFile> {
        paths
            .iter()
            .map(|p| ArtifactFile {
                path: p.to_string(),
                size: 1,
                sha256: "0".repeat(64),
                created_at: 0,
                kind: ArtifactKind::Build,
            })
            .collect()
    }

    #[test]
    fn a_fetch_saves_a_file_by_its_name_and_a_folder_whole_under_the_destination() {
        let files = stored(&[
            "out/bin/app",
            "out/bin/lib/x.so",
            "out/binary",
            "report.xml",
        ]);
        let saved = |source, is_file, destination| {
            fetch_files(source, is_file, destination, &files)
                .map(|picked| picked.into_iter().map(|f| f.save_as).collect::<Vec<_>>())
        };
        assert_eq!(saved("out/bin/app", true, None), Ok(vec!["app".into()]));
        assert_eq!(
            saved("/report.xml", true, Some("in/")),
            Ok(vec!["in/report.xml".into()])
        );
        assert_eq!(
            saved("out/bin", false, Some("pkg")),
            Ok(vec!["pkg/bin/app".into(), "pkg/bin/lib/x.so".into()])
        );
        assert_eq!(saved("out/", false, None).unwrap().len(), 3);
        assert!(
            saved("out/bin", true, None)
                .unwrap_err()
                .contains("is a folder")
        );
        assert!(
            saved("report.xml", false, None)
                .unwrap_err()
                .contains("not a folder")
        );
        assert_eq!(
            saved("missing", true, None),
            Err("no artifact file missing".into())
        );
        assert!(saved("../etc", false, None).unwrap_err().contains("`..`"));
    }

    #[test]
    fn paths_stay_inside_the_jobs_folder() {
        for good in [
            "a.bin",
            "dist/app.tar.gz",
            "reports/TEST-x.xml",
            "ünï/cødé.txt",
            ".hidden",
        ] {
            assert_eq!(ArtifactPath::parse(good).unwrap().as_str(), good);
        }
        for (bad, says) in [
            ("", "empty"),
            ("/etc/passwd", "absolute"),
            ("../x", "`..`"),
            ("a/../../x", "`..`"),
            ("a/./b", "`.`"),
            ("a//b", "empty segment"),
            ("a/", "empty segment"),
            ("a\\..\\b", "backslash"),
            ("a\nb", "control"),
        ] {
            let error = ArtifactPath::parse(bad).expect_err(bad);
            assert!(error.contains(says), "{bad:?}: {error}");
        }
        assert!(ArtifactPath::parse(&"a".repeat(1025)).is_err());
        assert_eq!(
            ArtifactPath::parse("Dist/App.BIN").unwrap().folded(),
            "dist/app.bin"
        );
    }

    #[test]
    fn checksums_are_64_hex_digits() {
        let sum = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
        assert_eq!(Sha256Hex::parse(sum).unwrap().as_str(), sum.to_lowercase());
        assert!(Sha256Hex::parse("abc").is_err());
        assert!(Sha256Hex::parse(&"g".repeat(64)).is_err());
    }
}
