//! The rules of the buyers' delivery mail: which contact is an e-mail address, how many tries
//! a mail gets, and how long to wait between them. Pure, so that the sender (ws-api), the
//! replayed state and the simulator share one schedule.
//!
//! Invariants: a mail gets at most `MAIL_ATTEMPTS_MAX` failed tries before it is given up; the
//! delay between tries doubles from the configured first delay and never exceeds
//! `MAIL_RETRY_DELAY_CAP_FACTOR` times it.

/// Failed tries after which a mail is given up (and shown to operators).
pub const MAIL_ATTEMPTS_MAX: u32 = 8;
/// Default delay before the first retry.
pub const MAIL_RETRY_FIRST_MS_DEFAULT: u64 = 30_000;
/// The longest delay between tries, as a multiple of the first (30 s x 64 = 32 min).
pub const MAIL_RETRY_DELAY_CAP_FACTOR: u64 = 64;
/// Longest error text a failed try records.
pub const MAIL_ERROR_BYTES_MAX: usize = 300;
/// Longest e-mail address (RFC 5321's path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
const MS_PER_HOUR: u64 = 3_600_000;
// With the default first delay the tries span more than an hour: a mail server's restart or
// a short outage never loses a buyer's mail.
const _: () = assert!(retries_span_ms(MAIL_RETRY_FIRST_MS_DEFAULT) >= MS_PER_HOUR);

/// The delay after failed try number `attempt` (1 for the first) before the next one.
pub const fn retry_delay_ms(first_ms: u64, attempt: u32) -> u64 {
    let cap = first_ms.saturating_mul(MAIL_RETRY_DELAY_CAP_FACTOR);
    let shift = if attempt == 0 { 0 } else { attempt - 1 };
    let doubled = if shift >= 63 {
        u64::MAX
    } else {
        first_ms.saturating_mul(1 << shift)
    };
    if doubled < cap {
        doubled
    } else {
        cap
    }
}

/// The time between the first try and the last.
pub const fn retries_span_ms(first_ms: u64) -> u64 {
    let mut total = 0;
    let mut attempt = 1;
    while attempt < MAIL_ATTEMPTS_MAX {
        total += retry_delay_ms(first_ms, attempt);
        attempt += 1;
    }
    total
}

/// When a mail with `attempts` failed tries, the last at `last_failed_at_ms`, is due.
pub fn next_try_at_ms(first_ms: u64, attempts: u32, last_failed_at_ms: u64) -> u64 {
    if attempts == 0 {
        return 0;
    }
    last_failed_at_ms.saturating_add(retry_delay_ms(first_ms, attempts))
}

/// Whether a buyer's contact is an e-mail address the shop may write to: one `@` between a
/// non-empty local part and a domain with a dot, no spaces or control characters.
pub fn is_email(contact: &str) -> bool {
    if contact.len() > EMAIL_BYTES_MAX
        || contact.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    let Some((local, domain)) = contact.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// An error text cut to `MAIL_ERROR_BYTES_MAX` on a character boundary.
pub fn bounded_error(error: &str) -> String {
    let mut end = error.len().min(MAIL_ERROR_BYTES_MAX);
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    error[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_doubles_then_caps() {
        assert_eq!(next_try_at_ms(1_000, 0, 5), 0);
        assert_eq!(retry_delay_ms(1_000, 1), 1_000);
        assert_eq!(retry_delay_ms(1_000, 2), 2_000);
        assert_eq!(retry_delay_ms(1_000, 7), 64_000);
        assert_eq!(retry_delay_ms(1_000, 8), 64_000);
        assert_eq!(next_try_at_ms(1_000, 2, 10_000), 12_000);
        assert_eq!(retry_delay_ms(u64::MAX, 3), u64::MAX);
    }

    #[test]
    fn e_mail_contacts_are_told_from_others() {
        for yes in ["buyer@example.com", "a.b+c@mail.example.cn"] {
            assert!(is_email(yes), "{yes}");
        }
        for no in [
            "13800138000",
            "@example.com",
            "buyer@",
            "buyer@localhost",
            "a@b@c.com",
            "a b@c.com",
            "buyer@.example.com",
            "buyer@example..com",
            "wechat:someone",
        ] {
            assert!(!is_email(no), "{no}");
        }
    }

    #[test]
    fn error_text_is_bounded_on_a_char_boundary() {
        let long = "错".repeat(200);
        let cut = bounded_error(&long);
        assert!(cut.len() <= MAIL_ERROR_BYTES_MAX);
        assert!(long.starts_with(&cut));
    }
}
