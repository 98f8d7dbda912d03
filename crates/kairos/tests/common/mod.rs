//! What the binary's tests share.

/// A suffix no other run uses, for stream names, subject prefixes and databases.
pub fn unique_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_nanos();
    format!("{nanos:x}")
}
