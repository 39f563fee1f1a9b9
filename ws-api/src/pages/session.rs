//! Operator sessions: in memory, bounded, expiring. A sign-in with the operator token makes
//! a session whose random 128-bit id travels in an `HttpOnly`, `SameSite=Strict` cookie
//! scoped to `/admin`; each session also carries its own random CSRF token that every form
//! must echo.
//!
//! Design decision: sessions live in one process-wide store rather than in `AppState`, so
//! that every HTTP worker sees the same sessions without the store being threaded through
//! the server's start-up. A restart signs every operator out, which is acceptable for a
//! handful of operators and keeps no secret on disk.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use engine::payment::signatures_equal;
use parking_lot::Mutex;
use rand::RngCore;

/// Most sessions held at once; a sign-in beyond it evicts the session closest to expiry.
pub const SESSIONS_MAX: usize = 64;
/// How long a session lasts from sign-in, however active.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);
/// The cookie that carries the session id.
pub const SESSION_COOKIE: &str = "panshi_session";
/// The cookie of the sign-in form's CSRF token (double submit: no session exists yet).
pub const SIGN_IN_CSRF_COOKIE: &str = "panshi_sign_in";

const _: () = assert!(SESSIONS_MAX >= 1);

/// 128 random bits from the operating system, in hex.
pub fn random_hex128() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    engine::ids::hex128(u128::from_le_bytes(bytes))
}

struct Session {
    /// The token every form of this session must carry.
    csrf: String,
    /// Monotonic: a wall-clock jump neither extends nor ends sessions.
    expires_at: Instant,
}

/// A signed-in operator, as a request proves it.
#[derive(Clone, Debug)]
pub struct OperatorSession {
    pub id: String,
    pub csrf: String,
}

impl OperatorSession {
    /// Whether a form's `csrf` field is this session's token (constant-time).
    pub fn csrf_matches(&self, submitted: &str) -> bool {
        !submitted.is_empty() && signatures_equal(&self.csrf, submitted)
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Opens a session; drops expired ones first and, at the bound, the one nearest expiry.
    pub fn create(&self, now: Instant) -> OperatorSession {
        let session = OperatorSession {
            id: random_hex128(),
            csrf: random_hex128(),
        };
        let mut map = self.map.lock();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= SESSIONS_MAX {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                map.remove(&id);
            }
        }
        map.insert(
            session.id.clone(),
            Session {
                csrf: session.csrf.clone(),
                expires_at: now + SESSION_LIFETIME,
            },
        );
        debug_assert!(map.len() <= SESSIONS_MAX);
        session
    }

    /// The live session with this id.
    pub fn get(&self, id: &str, now: Instant) -> Option<OperatorSession> {
        let mut map = self.map.lock();
        match map.get(id) {
            Some(s) if s.expires_at > now => Some(OperatorSession {
                id: id.to_owned(),
                csrf: s.csrf.clone(),
            }),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's sessions.
pub fn sessions() -> &'static Sessions {
    static SESSIONS: LazyLock<Sessions> = LazyLock::new(Sessions::default);
    &SESSIONS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_stay_bounded() {
        let sessions = Sessions::default();
        let start = Instant::now();
        let first = sessions.create(start);
        assert_eq!(first.id.len(), 32);
        assert_ne!(first.id, first.csrf);
        assert!(sessions.get(&first.id, start).is_some());
        assert!(sessions.get(&first.id, start + SESSION_LIFETIME).is_none());
        for i in 0..SESSIONS_MAX + 5 {
            sessions.create(start + Duration::from_secs(i as u64));
        }
        assert_eq!(sessions.len(), SESSIONS_MAX);
    }

    #[test]
    fn csrf_must_match_exactly() {
        let session = Sessions::default().create(Instant::now());
        assert!(session.csrf_matches(&session.csrf.clone()));
        assert!(!session.csrf_matches(""));
        assert!(!session.csrf_matches("0"));
    }
}
