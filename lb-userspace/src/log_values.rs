//! Values for log fields. A field logged with `?` is a Rust `Debug` string (`["web", "api"]`),
//! which JSON logs (`--log-format json`) would carry as one quoted blob; these render plain
//! values instead (`web,api`), the same in both formats.

use std::fmt;

/// A list as comma-separated values (empty: nothing).
pub struct List<'a, T>(pub &'a [T]);

impl<T: fmt::Display> fmt::Display for List<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            v.fmt(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_its_values_comma_separated() {
        assert_eq!(List(&["web", "api"]).to_string(), "web,api");
        assert_eq!(List::<u8>(&[]).to_string(), "");
        let addrs: [std::net::SocketAddr; 1] = ["[2001:db8::1]:80".parse().unwrap()];
        assert_eq!(List(&addrs).to_string(), "[2001:db8::1]:80");
    }
}
