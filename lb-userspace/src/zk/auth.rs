//! ZooKeeper digest credentials (`user:password`) from `--zk-auth-file` or the `LB_ZK_AUTH`
//! environment variable, so ACLs can restrict who may change the balancer.

use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable read when no `--zk-auth-file` is given.
pub const AUTH_ENV: &str = "LB_ZK_AUTH";

/// What to check when ZooKeeper refuses the credentials.
pub const REFUSED_HINT: &str = "check the user:password in --zk-auth-file (or $LB_ZK_AUTH) against the ensemble's digest users";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the ZooKeeper auth file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "ZooKeeper credentials from {origin} are malformed: {reason}; write one line `user:password`"
    )]
    Malformed {
        origin: String,
        reason: &'static str,
    },
}

/// Credentials for ZooKeeper's `digest` scheme. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct DigestAuth {
    user: String,
    password: String,
}

impl fmt::Debug for DigestAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl DigestAuth {
    /// Reads `user:password` (surrounding whitespace and one trailing newline ignored).
    pub fn parse(text: &str, origin: &str) -> Result<DigestAuth, AuthError> {
        let malformed = |reason| AuthError::Malformed {
            origin: origin.to_owned(),
            reason,
        };
        let text = text.trim();
        if text.lines().count() > 1 {
            return Err(malformed("it has more than one line"));
        }
        let (user, password) = text
            .split_once(':')
            .ok_or_else(|| malformed("no ':' found"))?;
        if user.is_empty() {
            return Err(malformed("the user name is empty"));
        }
        if password.is_empty() {
            return Err(malformed("the password is empty"));
        }
        Ok(DigestAuth {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Credentials from the file if given, else from `LB_ZK_AUTH` if set, else none.
    pub fn load(file: Option<&Path>) -> Result<Option<DigestAuth>, AuthError> {
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
                path: path.to_owned(),
                source,
            })?;
            return DigestAuth::parse(&text, &path.display().to_string()).map(Some);
        }
        match std::env::var(AUTH_ENV) {
            Ok(text) if !text.trim().is_empty() => {
                DigestAuth::parse(&text, &format!("${AUTH_ENV}")).map(Some)
            }
            _ => Ok(None),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The auth packet of the `digest` scheme.
    pub fn to_bytes(&self) -> Vec<u8> {
        format!("{}:{}", self.user, self.password).into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_password() {
        let auth = DigestAuth::parse("ops:s3cr:et\n", "test").unwrap();
        assert_eq!(auth.user(), "ops");
        assert_eq!(auth.to_bytes(), b"ops:s3cr:et");
        assert!(!format!("{auth:?}").contains("s3cr"));
    }

    #[test]
    fn malformed_credentials_say_what_is_wrong() {
        for (text, reason) in [
            ("ops", "no ':'"),
            (":pw", "user name is empty"),
            ("ops:", "password is empty"),
            ("a:b\nc:d", "more than one line"),
        ] {
            let err = DigestAuth::parse(text, "f").unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
            assert!(err.contains("user:password"), "{err}");
        }
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let err = DigestAuth::load(Some(Path::new("/nonexistent/zk-auth"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/zk-auth"));
    }
}
