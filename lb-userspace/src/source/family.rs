//! The one address-family rule: IPv4 services need an IPv4 outer source, IPv6 services an IPv6 one
//! (the tunnel to the backend is in the VIP's family). A service this host cannot tunnel is left out
//! of the state and reported per service; the others apply.

use lb_common::LbConfig;

use crate::model::DesiredState;
use crate::report::ServiceNotApplied;

/// The tunnel families this host has an outer source address for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

impl Families {
    pub fn of(outer: &LbConfig) -> Families {
        Families {
            v4: outer.src_v4 != 0,
            v6: outer.src_v6 != [0; 4],
        }
    }

    /// Splits `desired` into the services this host can forward and those it cannot (with why).
    pub fn split(self, mut desired: DesiredState) -> (DesiredState, Vec<ServiceNotApplied>) {
        let mut not_applied = Vec::new();
        desired.services.retain(|name, s| {
            let reason = if s.vip.is_ipv4() && !self.v4 {
                "it has an IPv4 VIP but the interface has no IPv4 address: pass --src-v4"
            } else if s.vip.is_ipv6() && !self.v6 {
                "it has an IPv6 VIP but the interface has no global IPv6 address: pass --src-v6"
            } else {
                return true;
            };
            not_applied.push(ServiceNotApplied {
                service: name.clone(),
                reason: reason.to_owned(),
            });
            false
        });
        (desired, not_applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ServiceSpec;

    fn state(vips: &[(&str, &str)]) -> DesiredState {
        DesiredState {
            services: vips
                .iter()
                .map(|(name, vip)| {
                    let mut s = ServiceSpec::new(*name, vip.parse().unwrap());
                    s.backends.clear();
                    ((*name).to_owned(), std::sync::Arc::new(s))
                })
                .collect(),
        }
    }

    #[test]
    fn a_service_of_a_missing_family_is_left_out_and_named() {
        let desired = state(&[
            ("web4", "198.18.100.1:80"),
            ("web6", "[2001:db8:100::1]:80"),
        ]);
        let (kept, not_applied) = Families {
            v4: true,
            v6: false,
        }
        .split(desired.clone());
        assert_eq!(kept.services.keys().collect::<Vec<_>>(), ["web4"]);
        assert_eq!(not_applied.len(), 1);
        assert_eq!(not_applied[0].service, "web6");
        assert!(
            not_applied[0].reason.contains("--src-v6"),
            "{not_applied:?}"
        );

        let (kept, not_applied) = Families {
            v4: false,
            v6: true,
        }
        .split(desired.clone());
        assert_eq!(kept.services.keys().collect::<Vec<_>>(), ["web6"]);
        assert_eq!(not_applied[0].service, "web4");
        assert!(
            not_applied[0].reason.contains("--src-v4"),
            "{not_applied:?}"
        );

        let (kept, not_applied) = Families { v4: true, v6: true }.split(desired.clone());
        assert_eq!(kept, desired);
        assert!(not_applied.is_empty());
    }

    #[test]
    fn families_come_from_the_outer_sources() {
        let mut outer = LbConfig::default();
        assert_eq!(
            Families::of(&outer),
            Families {
                v4: false,
                v6: false
            }
        );
        outer.src_v4 = 1;
        assert_eq!(
            Families::of(&outer),
            Families {
                v4: true,
                v6: false
            }
        );
        outer.src_v6 = [0, 0, 0, 1];
        assert_eq!(Families::of(&outer), Families { v4: true, v6: true });
    }
}
