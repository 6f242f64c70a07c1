//! Artifacts (the artifacts issue): the files a job publishes. A path and a checksum are
//! parsed once, where they come in, so the store only ever sees a path confined to the job's
//! folder and a well-formed SHA-256.

use std::fmt;

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
}

#[cfg(test)]
mod tests {
    use super::*;

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
