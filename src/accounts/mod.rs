//! The accounts context: who a person is and what they may do. Users and their passwords come
//! from the password file (`password_file.rs`), admins from `--admins`; sessions (the login
//! page's cookie) and personal access tokens (for scripts) are database rows holding only the
//! hash of their secret, so several server nodes can share them later.
//!
//! Without a password file the server is open, as GoCD is without an authentication plugin:
//! everyone is [`User::anonymous`], an admin.

mod password_file;
mod postgres;
mod sqlite;
mod store;
mod throttle;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use self::password_file::PasswordFile;
use self::throttle::LoginThrottle;
use crate::db::{Db, now_millis};
use crate::domain::user::{AccessToken, User, token_description};
use crate::error::{Error, Result};
use crate::secrets::{hash_token, random_token};

/// How long a login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// Personal access tokens start with this, so a leaked one is recognisable in a scan.
const TOKEN_PREFIX: &str = "fcd_";
/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY_MS: i64 = 60_000;

#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    users: Option<PasswordFile>,
    admins: Vec<String>,
    throttle: LoginThrottle,
}

impl Accounts {
    /// With a password file, every person must log in; without, the server is open.
    pub fn new(db: Db, password_file: Option<&Path>, admins: Vec<String>) -> Result<Accounts> {
        let users = password_file
            .map(PasswordFile::open)
            .transpose()
            .map_err(Error::Unprocessable)?;
        Ok(Accounts {
            inner: Arc::new(Inner {
                db,
                users,
                admins,
                throttle: LoginThrottle::default(),
            }),
        })
    }

    /// Whether people must log in.
    pub fn required(&self) -> bool {
        self.inner.users.is_some()
    }

    fn user(&self, name: &str) -> User {
        User {
            name: name.to_string(),
            admin: self
                .inner
                .admins
                .iter()
                .any(|admin| admin.eq_ignore_ascii_case(name)),
            signed_in: true,
        }
    }

    /// A user of the password file still there (a removed user's sessions and tokens stop).
    fn existing(&self, name: &str) -> Option<User> {
        match &self.inner.users {
            Some(users) => users.has_user(name).then(|| self.user(name)),
            None => Some(User::anonymous()),
        }
    }

    /// Checks a user's password, slowing down repeated failures of one user from one address
    /// (`TooManyRequests` while it must wait).
    pub async fn check_password(&self, name: &str, password: &str, from: IpAddr) -> Result<User> {
        let Some(users) = &self.inner.users else {
            return Ok(User::anonymous());
        };
        let throttle = &self.inner.throttle;
        if let Err(wait) = throttle.check(name, from) {
            let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
            return Err(Error::TooManyRequests {
                message: format!("too many failed logins; try again in {seconds} s"),
                retry_after: seconds,
            });
        }
        if users.verify(name, password).await {
            throttle.succeeded(name, from);
            Ok(self.user(name))
        } else {
            throttle.failed(name, from);
            Err(Error::Unauthorized("wrong user name or password".into()))
        }
    }

    /// Starts a session for `user`; the secret returned is the cookie's value.
    pub async fn start_session(&self, user: &User) -> Result<String> {
        let secret = random_token();
        let now = now_millis();
        let mut tx = self.inner.db.begin().await?;
        store::delete_expired_sessions(tx.conn(), now).await?;
        store::insert_session(
            tx.conn(),
            &hash_token(&secret),
            &user.name,
            now,
            now + SESSION_LIFETIME.as_millis() as i64,
        )
        .await?;
        tx.commit().await?;
        Ok(secret)
    }

    /// The user a session cookie belongs to, if it is live.
    pub async fn session_user(&self, secret: &str) -> Result<Option<User>> {
        let mut read = self.inner.db.reader().await?;
        let name = store::session_user(read.conn(), &hash_token(secret), now_millis()).await?;
        Ok(name.and_then(|name| self.existing(&name)))
    }

    pub async fn end_session(&self, secret: &str) -> Result<()> {
        let mut tx = self.inner.db.begin().await?;
        store::delete_session(tx.conn(), &hash_token(secret)).await?;
        tx.commit().await
    }

    /// The user of a personal access token that is not revoked.
    pub async fn token_user(&self, secret: &str) -> Result<Option<User>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let token = {
            let mut read = self.inner.db.reader().await?;
            store::token_by_hash(read.conn(), &hash_token(secret)).await?
        };
        let Some(token) = token.filter(|t| !t.revoked()) else {
            return Ok(None);
        };
        let now = now_millis();
        if token
            .last_used_at
            .is_none_or(|at| now - at >= TOUCH_EVERY_MS)
        {
            let mut tx = self.inner.db.begin().await?;
            store::touch_token(tx.conn(), token.id, now).await?;
            tx.commit().await?;
        }
        Ok(self.existing(&token.username))
    }

    /// A new token for `user`; the secret is in the answer this once.
    pub async fn create_token(
        &self,
        user: &User,
        description: &str,
    ) -> Result<(AccessToken, String)> {
        let description = token_description(description)?;
        let secret = format!("{TOKEN_PREFIX}{}", random_token());
        let mut tx = self.inner.db.begin().await?;
        let id = store::insert_token(
            tx.conn(),
            &user.name,
            &description,
            &hash_token(&secret),
            now_millis(),
        )
        .await?;
        let token = store::token(tx.conn(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("access token {id} vanished")))?;
        tx.commit().await?;
        Ok((token, secret))
    }

    /// `user`'s tokens, newest first.
    pub async fn tokens(&self, user: &User) -> Result<Vec<AccessToken>> {
        let mut read = self.inner.db.reader().await?;
        store::tokens_of(read.conn(), &user.name).await
    }

    /// One of `user`'s tokens (someone else's is not found).
    pub async fn token(&self, user: &User, id: i64) -> Result<AccessToken> {
        let mut read = self.inner.db.reader().await?;
        store::token(read.conn(), id)
            .await?
            .filter(|t| t.username == user.name)
            .ok_or_else(|| Error::NotFound(format!("you have no access token {id}")))
    }

    /// Revokes one of `user`'s tokens; revoking it again is a 422, as GoCD answers.
    pub async fn revoke_token(&self, user: &User, id: i64, cause: &str) -> Result<AccessToken> {
        let mut tx = self.inner.db.begin().await?;
        let token = store::token(tx.conn(), id)
            .await?
            .filter(|t| t.username == user.name)
            .ok_or_else(|| Error::NotFound(format!("you have no access token {id}")))?;
        if token.revoked() {
            return Err(Error::Unprocessable(format!(
                "access token {id} is already revoked"
            )));
        }
        store::revoke_token(tx.conn(), id, &user.name, cause.trim(), now_millis()).await?;
        let token = store::token(tx.conn(), id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("access token {id} vanished")))?;
        tx.commit().await?;
        Ok(token)
    }
}
