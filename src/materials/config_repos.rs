//! Config repositories (`--config-repo URL[#branch]`, GoCD's config repos): polled like the
//! materials, into mirrors of their own (`DATA_DIR/config-repos/{fingerprint}.git`); a new
//! revision's `*.gocd.yaml|yml` files go to the config sources, which take the revision
//! whole or keep the last good one. The last good revision is remembered beside the mirror
//! (`{fingerprint}.good`, a file, as config stays files), so a restart starts from it rather
//! than from a broken head, and the next poll reads the head again.

use std::path::PathBuf;

use super::Materials;
use super::git::{self, Remote};
use crate::config_sources::{ConfigRepo, RepoFiles};
use crate::db::now_millis;
use crate::domain::material::{Fingerprint, normalized_url};
use crate::error::Result;

impl Materials {
    fn config_mirror(&self, repo: &ConfigRepo) -> (PathBuf, PathBuf) {
        let fingerprint = Fingerprint::of_git(&repo.url, &repo.branch);
        let dir = &self.config_mirrors;
        (
            git::mirror_dir(dir, fingerprint.as_str()),
            dir.join(format!("{}.good", fingerprint.as_str())),
        )
    }

    /// At start: each config repository's last good revision, from its mirror, before any
    /// poll (a repository never read well starts empty).
    pub async fn restore_config_repos(&self) -> Result<()> {
        for repo in self.pipelines.configs().repos() {
            let (mirror, good) = self.config_mirror(repo);
            let Ok(revision) = std::fs::read_to_string(&good) else {
                continue;
            };
            let revision = revision.trim();
            let remote = Remote::new(&repo.url, &repo.branch, None, None);
            match git::config_files(&remote, &mirror, revision).await {
                Ok(files) => {
                    self.pipelines
                        .configs()
                        .set_repo_files(
                            repo,
                            RepoFiles::Read {
                                revision: revision.to_string(),
                                files,
                                read_at: now_millis(),
                            },
                        )
                        .await?;
                }
                Err(error) => {
                    tracing::warn!(url = %remote.url, "cannot read the last good config revision {revision}: {error}");
                }
            }
        }
        Ok(())
    }

    /// Polls every config repository once, one after another.
    pub async fn poll_config_repos(&self) {
        for repo in self.pipelines.configs().repos().to_vec() {
            if let Err(error) = self.poll_config_repo(&repo).await {
                tracing::warn!(%error, "a config repository's poll could not be stored");
            }
        }
    }

    /// Polls the config repositories on `url` (any spelling) and `branch` (any, if `None`) in
    /// the background (a webhook or notify); answers how many.
    pub(crate) fn notify_config_repos(&self, url: &str, branch: Option<&str>) -> usize {
        let wanted = normalized_url(url);
        let due: Vec<ConfigRepo> = self
            .pipelines
            .configs()
            .repos()
            .iter()
            .filter(|r| normalized_url(&r.url) == wanted)
            .filter(|r| branch.is_none_or(|b| b == r.branch))
            .cloned()
            .collect();
        for repo in &due {
            let materials = self.clone();
            let repo = repo.clone();
            tokio::spawn(async move {
                if let Err(error) = materials.poll_config_repo(&repo).await {
                    tracing::warn!(%error, "a notified config repository's poll could not be stored");
                }
            });
        }
        due.len()
    }

    /// Fetches `repo`; a revision not read yet is read and handed to the config sources, and
    /// remembered as the last good one if they take it. A failing poll is shown beside the
    /// repository once (not re-published every round) and keeps what is in effect.
    pub async fn poll_config_repo(&self, repo: &ConfigRepo) -> Result<()> {
        let fingerprint = Fingerprint::of_git(&repo.url, &repo.branch);
        let lock = self.poll_lock(&fingerprint);
        let _one_at_a_time = lock.lock().await;
        let configs = self.pipelines.configs();
        let state = configs
            .snapshot()
            .repo_state(repo)
            .cloned()
            .unwrap_or_default();
        let (mirror, good) = self.config_mirror(repo);
        let remote = Remote::new(&repo.url, &repo.branch, None, None);
        let read = match git::poll(&remote, &mirror, state.last_read(), super::POLL_TIMEOUT).await {
            Ok(polled) => {
                if state.last_read() == Some(polled.revision.as_str()) && state.poll_error.is_none()
                {
                    return Ok(());
                }
                match git::config_files(&remote, &mirror, &polled.revision).await {
                    Ok(files) => RepoFiles::Read {
                        revision: polled.revision,
                        files,
                        read_at: now_millis(),
                    },
                    Err(error) => RepoFiles::Failed {
                        error,
                        read_at: now_millis(),
                    },
                }
            }
            Err(error) => {
                if state.poll_error.as_deref() == Some(error.as_str()) {
                    return Ok(());
                }
                tracing::info!(url = %remote.url, branch = %remote.branch, "config repository poll failed: {error}");
                RepoFiles::Failed {
                    error,
                    read_at: now_millis(),
                }
            }
        };
        let read_revision = match &read {
            RepoFiles::Read { revision, .. } => Some(revision.clone()),
            RepoFiles::Failed { .. } => None,
        };
        let in_effect = configs.set_repo_files(repo, read).await?;
        if let Some(revision) = read_revision.filter(|r| in_effect.as_deref() == Some(r.as_str()))
            && let Err(error) = std::fs::write(&good, format!("{revision}\n"))
        {
            tracing::warn!("cannot remember {}: {error}", good.display());
        }
        Ok(())
    }
}
