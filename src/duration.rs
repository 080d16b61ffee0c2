//! Durations as configs and the command line write them (`90s`, `30m`, `1h`, `7d`). A leaf
//! module, so that `config` and `auth` both read them without importing each other. Hand-written:
//! humantime also takes `1h 30m` and `0s`, which these settings must refuse.

/// Parses a duration such as `90s`, `30m`, `1h` or `7d`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30m or 1h"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    match n.checked_mul(unit_secs) {
        Some(0) => Err("the duration must be positive".into()),
        Some(secs) => Ok(std::time::Duration::from_secs(secs)),
        None => Err(format!("{text:?} is too long")),
    }
}
