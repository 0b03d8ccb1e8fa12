//! Flag values as clap hands them over (strings), parsed in one place so a
//! binary reports every bad value before it exits (code 2), not just the
//! first one clap meets. Defaults go in the doc text (`[default: X]`), as
//! the terminator's do, so every binary's `--help` reads the same way.

use std::net::SocketAddr;
use std::time::Duration;

/// Collects `--flag: reason` problems while values are parsed.
#[derive(Debug, Default)]
pub struct Parsed {
    pub problems: Vec<String>,
}

impl Parsed {
    /// `value` parsed with `parse`, or `default` when it was not given; a
    /// value that does not parse is recorded and the default kept.
    pub fn get<T>(
        &mut self,
        flag: &str,
        value: Option<&str>,
        default: T,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> T {
        match value.map(parse) {
            None => default,
            Some(Ok(x)) => x,
            Some(Err(e)) => {
                self.problems.push(format!("{flag}: {e}"));
                default
            }
        }
    }
}

/// `HOST:PORT` with an IP address.
pub fn addr(v: &str) -> Result<SocketAddr, String> {
    v.parse()
        .map_err(|_| format!("`{v}` is not HOST:PORT (an IP address and a port)"))
}

/// A count of at least 1.
pub fn count(v: &str) -> Result<usize, String> {
    match v.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{v}` is not a positive integer")),
    }
}

/// A duration above zero: `250ms`, `5s`, `2m`, `1h`.
pub fn duration(v: &str) -> Result<Duration, String> {
    match crate::parse_duration(v) {
        Ok(d) if d.is_zero() => Err("must be more than 0".into()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_are_collected_and_defaults_kept() {
        let mut p = Parsed::default();
        assert_eq!(p.get("--n", Some("3"), 1, count), 3);
        assert_eq!(p.get("--n", None, 1, count), 1);
        assert_eq!(p.get("--n", Some("0"), 1, count), 1);
        assert_eq!(p.get("--n", Some("x"), 1, count), 1);
        let d = Duration::from_secs(1);
        assert_eq!(p.get("--d", Some("0s"), d, duration), d);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(p.get("--a", Some("localhost"), a, addr), a);
        assert_eq!(p.problems.len(), 4, "{:#?}", p.problems);
        assert!(
            p.problems[3].starts_with("--a: `localhost`"),
            "{:#?}",
            p.problems
        );
    }
}
