//! Submission users: the users file and password verification.
//!
//! The file holds one `user:$argon2id$v=19$m=...,t=...,p=...$salt$hash` line per user
//! (PHC string format, as `smtp-node hash-password` prints it); `#` starts a comment line.
//! The operator renders it from a Secret, so it is re-read whenever it changes on disk.
//!
//! Argon2 is deliberately slow (tens of milliseconds at the recommended cost), so every
//! verification runs on the blocking pool and never stalls the reactor. Unknown users are
//! verified against a dummy hash of the same cost so that timing does not reveal which user
//! names exist.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password verification task failed: {0}")]
    Task(String),
}

/// Parses users-file text into user → PHC hash. Pure, for tests and `check-config`.
pub fn parse_users(text: &str) -> Result<HashMap<String, String>, AuthError> {
    let mut users = HashMap::new();
    for (number, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let syntax = |message: &str| AuthError::Syntax {
            line: number + 1,
            message: message.to_string(),
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| syntax("expected `user:$argon2id$...`"))?;
        if user.is_empty() {
            return Err(syntax("empty user name"));
        }
        let parsed = PasswordHash::new(hash).map_err(|e| syntax(&format!("bad hash: {e}")))?;
        if !parsed.algorithm.as_str().starts_with("argon2") {
            return Err(syntax("only argon2 hashes are accepted"));
        }
        if users.insert(user.to_string(), hash.to_string()).is_some() {
            return Err(syntax(&format!("user `{user}` is listed twice")));
        }
    }
    Ok(users)
}

/// Hashes a password with Argon2id at the given cost, in PHC string form.
pub fn hash_password_with(password: &str, params: Params) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Hashes a password with Argon2id at the recommended cost (19 MiB, 2 passes).
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    hash_password_with(password, Params::default())
}

fn verify_hash(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok(),
        Err(_) => false,
    }
}

struct Loaded {
    users: Arc<HashMap<String, String>>,
    modified: Option<SystemTime>,
    len: u64,
    /// Hash of the same cost as a real user's, checked for unknown users.
    dummy: Arc<String>,
}

/// The users file, re-read when it changes.
pub struct UserDb {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for UserDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserDb").field("path", &self.path).finish()
    }
}

impl UserDb {
    pub fn load(path: impl AsRef<Path>) -> Result<Self, AuthError> {
        let path = path.as_ref().to_path_buf();
        let loaded = read_users(&path)?;
        Ok(Self {
            path,
            loaded: Mutex::new(loaded),
        })
    }

    pub fn len(&self) -> usize {
        self.lock().users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-reads the file if its size or modification time changed. A file that became
    /// unreadable or invalid keeps the previous users (and is logged), so a bad update
    /// cannot lock everyone out.
    fn refresh(&self) {
        let Ok(metadata) = std::fs::metadata(&self.path) else {
            return;
        };
        let (modified, len) = (metadata.modified().ok(), metadata.len());
        {
            let loaded = self.lock();
            if loaded.modified == modified && loaded.len == len {
                return;
            }
        }
        match read_users(&self.path) {
            Ok(fresh) => {
                tracing::info!(path = %self.path.display(), users = fresh.users.len(), "reloaded users file");
                *self.lock() = fresh;
            }
            Err(e) => {
                tracing::error!(error = %e, "keeping the previous users after a failed reload")
            }
        }
    }

    /// Checks a user's password. Runs Argon2 on the blocking pool.
    pub async fn verify(&self, user: &str, password: &str) -> Result<bool, AuthError> {
        self.refresh();
        let (hash, known) = {
            let loaded = self.lock();
            match loaded.users.get(user) {
                Some(hash) => (hash.clone(), true),
                None => (loaded.dummy.as_str().to_string(), false),
            }
        };
        let password = password.to_string();
        let matched = tokio::task::spawn_blocking(move || verify_hash(&password, &hash))
            .await
            .map_err(|e| AuthError::Task(e.to_string()))?;
        Ok(known && matched)
    }
}

fn read_users(path: &Path) -> Result<Loaded, AuthError> {
    let read_err = |source| AuthError::Read {
        path: path.to_path_buf(),
        source,
    };
    let metadata = std::fs::metadata(path).map_err(read_err)?;
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    let users = parse_users(&text)?;
    // The dummy takes the cost parameters of a real entry, so a miss costs what a hit does.
    let params = users
        .values()
        .next()
        .and_then(|phc| PasswordHash::new(phc).ok())
        .and_then(|hash| Params::try_from(&hash).ok())
        .unwrap_or_default();
    let dummy = hash_password_with("not a real password", params)?;
    Ok(Loaded {
        users: Arc::new(users),
        modified: metadata.modified().ok(),
        len: metadata.len(),
        dummy: Arc::new(dummy),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: unoptimised test builds would take seconds per default hash.
    pub(crate) fn cheap() -> Params {
        Params::new(64, 1, 1, None).unwrap()
    }

    #[test]
    fn parses_users_and_comments() {
        let hash = hash_password_with("secret", cheap()).unwrap();
        let text = format!("# users\n\nalice:{hash}\n  bob:{hash}  \n");
        let users = parse_users(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert!(verify_hash("secret", &users["alice"]));
        assert!(!verify_hash("wrong", &users["bob"]));
    }

    #[test]
    fn reports_bad_lines_by_number() {
        let err = parse_users("# c\nalice\n").unwrap_err();
        assert!(err.to_string().starts_with("users file line 2"), "{err}");
        let err = parse_users("alice:plaintext\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let hash = hash_password_with("x", cheap()).unwrap();
        let err = parse_users(&format!("a:{hash}\na:{hash}\n")).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[tokio::test]
    async fn verifies_and_reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let hash = hash_password_with("first", cheap()).unwrap();
        std::fs::write(&path, format!("alice:{hash}\n")).unwrap();
        let db = UserDb::load(&path).unwrap();
        assert!(db.verify("alice", "first").await.unwrap());
        assert!(!db.verify("alice", "second").await.unwrap());
        assert!(!db.verify("mallory", "first").await.unwrap());

        let hash = hash_password_with("second", cheap()).unwrap();
        std::fs::write(&path, format!("alice:{hash}\ncarol:{hash}\n")).unwrap();
        assert!(db.verify("alice", "second").await.unwrap());
        assert!(db.verify("carol", "second").await.unwrap());
        assert_eq!(db.len(), 2);

        // A broken update keeps the last good users.
        std::fs::write(&path, "garbage without colon and longer than before\n").unwrap();
        assert!(db.verify("carol", "second").await.unwrap());
    }
}
