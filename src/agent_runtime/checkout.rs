//! The agent's side of a git material: before a job's tasks, each material of its instance is
//! checked out at the instance's revision into its `destination` (or the sandbox itself),
//! reusing the clone a previous job left there (a fetch and a checkout, not a fresh clone per
//! job), shallow when the material asks. Credentials reach git through its environment only
//! (the helper of `domain::material`), and never appear in the console.

use std::path::{Component, Path, PathBuf};

use tokio::process::Command;

use super::console::ConsoleWriter;
use crate::domain::material::{Checkout, GIT_CREDENTIAL_ARGS, GIT_PASSWORD_ENV, GIT_USERNAME_ENV};

/// Checks `material` out into the sandbox; `Err` says why not (credentials scrubbed).
pub async fn checkout(
    material: &Checkout,
    sandbox: &Path,
    console: &mut ConsoleWriter,
) -> Result<(), String> {
    let dir = destination(sandbox, material.destination.as_deref())?;
    let shown = material
        .destination
        .as_deref()
        .filter(|d| !d.is_empty())
        .unwrap_or(".");
    console
        .marker(&format!(
            "Checking out material {} ({} {}) at {} into {shown}",
            material.material, material.url, material.branch, material.revision
        ))
        .await;
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if !dir.join(".git").exists() {
        git(material, &dir, &["init", "--quiet"]).await?;
    }
    let refspec = format!("+refs/heads/{0}:refs/remotes/ferrocd/{0}", material.branch);
    let mut fetch = vec!["fetch", "--quiet", "--no-tags"];
    if material.shallow {
        fetch.extend(["--depth", "1"]);
    }
    fetch.extend([material.url.as_str(), refspec.as_str()]);
    git(material, &dir, &fetch).await?;
    let check_out = [
        "-c",
        "advice.detachedHead=false",
        "checkout",
        "--quiet",
        "--force",
        material.revision.as_str(),
    ];
    if git(material, &dir, &check_out).await.is_err() {
        // A shallow fetch may lack an older revision: fetch the whole branch and try again.
        let unshallow = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--unshallow",
            material.url.as_str(),
            refspec.as_str(),
        ];
        if material.shallow {
            git(material, &dir, &unshallow).await?;
        }
        git(material, &dir, &check_out).await?;
    }
    Ok(())
}

/// `sandbox/destination`: a relative path that stays inside the sandbox.
fn destination(sandbox: &Path, destination: Option<&str>) -> Result<PathBuf, String> {
    let Some(destination) = destination.filter(|d| !d.is_empty()) else {
        return Ok(sandbox.to_path_buf());
    };
    let path = Path::new(destination);
    if path
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!(
            "the material destination {destination:?} must be a folder inside the sandbox"
        ));
    }
    Ok(sandbox.join(path))
}

async fn git(material: &Checkout, dir: &Path, args: &[&str]) -> Result<(), String> {
    let output = Command::new("git")
        .args(GIT_CREDENTIAL_ARGS)
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env(GIT_USERNAME_ENV, material.username.as_deref().unwrap_or(""))
        .env(GIT_PASSWORD_ENV, material.password.as_deref().unwrap_or(""))
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run git: {e} (is git installed on the agent?)"))?;
    if output.status.success() {
        return Ok(());
    }
    let mut error = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if let Some(password) = material.password.as_deref().filter(|p| !p.is_empty()) {
        error = error.replace(password, "****");
    }
    Err(format!(
        "git {} failed for material {}: {error}",
        args.iter()
            .find(|a| ["init", "fetch", "checkout"].contains(a))
            .unwrap_or(&"?"),
        material.material
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destination_stays_in_the_sandbox() {
        let sandbox = Path::new("/w/pipelines/app");
        assert_eq!(destination(sandbox, None).unwrap(), sandbox);
        assert_eq!(
            destination(sandbox, Some("src/app")).unwrap(),
            sandbox.join("src/app")
        );
        for bad in ["../other", "/etc", "a/../../b"] {
            assert!(destination(sandbox, Some(bad)).is_err(), "{bad}");
        }
    }
}
