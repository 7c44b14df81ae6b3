//! The kubelet node's network, kept on this host and failing closed.
//!
//! - The node (and the API server) get a host-local address on `lo`
//!   (`node_ip`, default 10.245.0.1/32), not 127.0.0.1: Pods cannot reach the
//!   host's loopback, and kube-apiserver refuses a loopback advertise address.
//! - Pods sit on a bridge of ours (`sa-lab0`) that sa-lab creates with the
//!   gateway address before any Pod exists; the CNI bridge plugin only adds
//!   veths to it (`isGateway: false`), so it never turns on the host's IP
//!   forwarding and never masquerades. Forwarding is switched off on the
//!   bridge itself (`net.ipv4.conf.sa-lab0.forwarding=0`) and IPv6 is off on
//!   it: whatever the host's global setting, the kernel routes nothing a Pod
//!   sends anywhere but to this host.
//! - On top of that, iptables chains of ours reject Pod traffic that would be
//!   forwarded, and Pod traffic to this host other than to the API server.
//! - The Service CIDR has an `unreachable` route while the cluster runs, so a
//!   Service address without a kube-proxy rule fails instead of following the
//!   default route out.
//! - The CIDRs are read against the host's routes and resolvers at start:
//!   a collision is refused with the route it collides with.

use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The bridge the Pods' veths join.
pub const BRIDGE: &str = "sa-lab0";
/// Our iptables chains (filter table, IPv4).
pub const INPUT_CHAIN: &str = "SA-LAB-INPUT";
pub const FORWARD_CHAIN: &str = "SA-LAB-FORWARD";
/// Default addresses, each overridable by an environment variable.
pub const DEFAULT_NODE_IP: &str = "10.245.0.1";
/// kind's Pod subnet; one node uses its first /24.
pub const DEFAULT_POD_CIDR: &str = "10.244.0.0/24";
/// kind's Service subnet: the `kubernetes` Service is 10.96.0.1, as on kind.
pub const DEFAULT_SERVICE_CIDR: &str = "10.96.0.0/16";

/// The addresses of a kubelet-node cluster.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Network {
    /// On `lo`: the node's InternalIP, the kubelet's and the API server's address.
    pub node_ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
}

/// A problem with the chosen addresses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// An override is not an address or CIDR.
    #[error("{var}={value:?} is not {what}")]
    Invalid {
        var: &'static str,
        value: String,
        what: &'static str,
    },
    /// A range collides with the host's network.
    #[error(
        "the {what} {net} overlaps {with} on this host; Pods would reach (or hide) it. \
         Choose a free range with {var}=<cidr>"
    )]
    Collision {
        what: &'static str,
        net: String,
        with: String,
        var: &'static str,
    },
    /// Two of our ranges overlap each other.
    #[error("the {a} {a_net} and the {b} {b_net} overlap; choose disjoint ranges")]
    Overlap {
        a: &'static str,
        a_net: String,
        b: &'static str,
        b_net: String,
    },
}

/// A route of the host (any table), as read from `ip -j route`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRoute {
    pub dst: Ipv4Net,
    /// For messages: "route 192.0.2.0/24 dev eth0".
    pub describe: String,
}

impl Network {
    /// The addresses from `SA_LAB_NODE_IP`, `SA_LAB_POD_CIDR`,
    /// `SA_LAB_SERVICE_CIDR` (else the defaults), not yet checked.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Network, PlanError> {
        let node_ip = get("SA_LAB_NODE_IP").unwrap_or_else(|| DEFAULT_NODE_IP.into());
        let pod = get("SA_LAB_POD_CIDR").unwrap_or_else(|| DEFAULT_POD_CIDR.into());
        let svc = get("SA_LAB_SERVICE_CIDR").unwrap_or_else(|| DEFAULT_SERVICE_CIDR.into());
        let invalid = |var, value: &str, what| PlanError::Invalid {
            var,
            value: value.to_string(),
            what,
        };
        let net = |var, value: &str| -> Result<Ipv4Net, PlanError> {
            let n: Ipv4Net = value
                .parse()
                .map_err(|_| invalid(var, value, "an IPv4 CIDR such as 10.244.0.0/24"))?;
            if n.prefix_len() > 28 || n != n.trunc() {
                return Err(invalid(
                    var,
                    value,
                    "a network address with a prefix of /28 or wider",
                ));
            }
            Ok(n)
        };
        Ok(Network {
            node_ip: node_ip
                .parse()
                .map_err(|_| invalid("SA_LAB_NODE_IP", &node_ip, "an IPv4 address"))?,
            pod_cidr: net("SA_LAB_POD_CIDR", &pod)?,
            service_cidr: net("SA_LAB_SERVICE_CIDR", &svc)?,
        })
    }

    /// The bridge's address and the Pods' gateway: the Pod CIDR's first host.
    pub fn gateway(&self) -> Ipv4Addr {
        nth(self.pod_cidr, 1)
    }

    /// The `kubernetes` Service's ClusterIP: the Service CIDR's first host.
    pub fn kubernetes_service_ip(&self) -> Ipv4Addr {
        nth(self.service_cidr, 1)
    }

    pub fn node_net(&self) -> Ipv4Net {
        Ipv4Net::new(self.node_ip, 32).expect("/32 is a valid prefix")
    }

    /// Refuses ranges that overlap each other, a host route (other than
    /// the default route) or a resolver.
    pub fn check(&self, routes: &[HostRoute], resolvers: &[Ipv4Addr]) -> Result<(), PlanError> {
        let ours = [
            ("node address", self.node_net(), "SA_LAB_NODE_IP"),
            ("Pod CIDR", self.pod_cidr, "SA_LAB_POD_CIDR"),
            ("Service CIDR", self.service_cidr, "SA_LAB_SERVICE_CIDR"),
        ];
        for (i, (a, an, _)) in ours.iter().enumerate() {
            for (b, bn, _) in &ours[i + 1..] {
                if overlaps(*an, *bn) {
                    return Err(PlanError::Overlap {
                        a,
                        a_net: an.to_string(),
                        b,
                        b_net: bn.to_string(),
                    });
                }
            }
        }
        for (what, net, var) in ours {
            if let Some(r) = routes.iter().find(|r| overlaps(net, r.dst)) {
                return Err(PlanError::Collision {
                    what,
                    net: net.to_string(),
                    with: r.describe.clone(),
                    var,
                });
            }
            if let Some(ip) = resolvers.iter().find(|ip| net.contains(*ip)) {
                return Err(PlanError::Collision {
                    what,
                    net: net.to_string(),
                    with: format!("the resolver {ip} (/etc/resolv.conf)"),
                    var,
                });
            }
        }
        Ok(())
    }
}

fn nth(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses `ip -j -4 route show table all`: every route but default routes.
pub fn parse_routes(json: &str) -> Vec<HostRoute> {
    let Ok(serde_json::Value::Array(items)) = serde_json::from_str(json) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|r| {
            let dst = r.get("dst")?.as_str()?;
            if dst == "default" {
                return None;
            }
            let net: Ipv4Net = dst
                .parse()
                .ok()
                .or_else(|| dst.parse::<Ipv4Addr>().ok().map(Ipv4Net::from))?;
            let mut describe = format!("the route {dst}");
            if let Some(t) = r.get("type").and_then(|t| t.as_str()) {
                describe = format!("the {t} route {dst}");
            }
            if let Some(dev) = r.get("dev").and_then(|d| d.as_str()) {
                describe.push_str(&format!(" dev {dev}"));
            }
            if let Some(table) = r.get("table").and_then(|t| t.as_str()) {
                describe.push_str(&format!(" (table {table})"));
            }
            Some(HostRoute { dst: net, describe })
        })
        .collect()
}

/// The IPv4 nameservers of a resolv.conf.
pub fn parse_resolvers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// Reads the host's routes and resolvers.
pub fn host_view() -> Result<(Vec<HostRoute>, Vec<Ipv4Addr>), String> {
    let out = Command::new("ip")
        .args(["-j", "-4", "route", "show", "table", "all"])
        .output()
        .map_err(|e| format!("running `ip route` (iproute2): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`ip -j -4 route show table all` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let routes = parse_routes(&String::from_utf8_lossy(&out.stdout));
    let resolvers =
        parse_resolvers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
    Ok((routes, resolvers))
}

/// The iptables rules of our chains: (chain, the built-in chain that jumps
/// to it, its rules as arguments).
pub fn fail_closed_rules(
    net: &Network,
    api_port: u16,
) -> Vec<(&'static str, &'static str, Vec<Vec<String>>)> {
    let (pod, node) = (net.pod_cidr, net.node_ip);
    let rules = |lines: &[String]| {
        lines
            .iter()
            .map(|l| l.split_whitespace().map(String::from).collect())
            .collect()
    };
    vec![
        (
            INPUT_CHAIN,
            "INPUT",
            // Pods reach the API server (after kube-proxy's DNAT of the
            // kubernetes Service), and answer what the host sent them.
            rules(&[
                format!("-s {pod} -d {node} -p tcp --dport {api_port} -j RETURN"),
                format!("-s {pod} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN"),
                format!("-s {pod} -j REJECT --reject-with icmp-admin-prohibited"),
            ]),
        ),
        (
            FORWARD_CHAIN,
            "FORWARD",
            // Pod to Pod on the bridge (seen here only with br_netfilter);
            // nothing else in or out.
            rules(&[
                format!("-s {pod} -d {pod} -j RETURN"),
                format!("-s {pod} -j REJECT --reject-with icmp-net-prohibited"),
                format!("-d {pod} -j DROP"),
            ]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Network {
        Network::from_vars(|_| None).unwrap()
    }

    const ROUTES: &str = r#"[
      {"type":"unicast","dst":"default","gateway":"192.0.2.1","dev":"eth0","flags":[]},
      {"dst":"192.0.2.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"192.0.2.2","flags":[]},
      {"type":"local","dst":"127.0.0.0/8","table":"local","dev":"lo","flags":[]},
      {"type":"local","dst":"192.0.2.2","table":"local","dev":"eth0","flags":[]}
    ]"#;

    #[test]
    fn defaults_fit_this_kind_of_host() {
        let net = defaults();
        assert_eq!(net.gateway().to_string(), "10.244.0.1");
        assert_eq!(net.kubernetes_service_ip().to_string(), "10.96.0.1");
        let routes = parse_routes(ROUTES);
        assert_eq!(routes.len(), 3, "the default route is not a collision");
        let resolvers = parse_resolvers("# c\nnameserver 10.255.255.53\nnameserver ::1\n");
        assert_eq!(resolvers, vec![Ipv4Addr::new(10, 255, 255, 53)]);
        net.check(&routes, &resolvers).unwrap();
    }

    #[test]
    fn a_colliding_route_is_refused_by_name() {
        let net = defaults();
        let mut routes = parse_routes(ROUTES);
        routes.extend(parse_routes(
            r#"[{"dst":"10.0.0.0/8","dev":"tun0","flags":[]}]"#,
        ));
        let err = net.check(&routes, &[]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("10.245.0.1/32 overlaps the route 10.0.0.0/8 dev tun0"),
            "{msg}"
        );
        assert!(msg.contains("SA_LAB_NODE_IP"), "{msg}");
    }

    #[test]
    fn a_resolver_inside_a_range_is_refused() {
        let net = defaults();
        let err = net.check(&[], &[Ipv4Addr::new(10, 96, 0, 10)]).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Collision {
                    what: "Service CIDR",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn overrides_are_validated() {
        let vars = |k: &str| (k == "SA_LAB_POD_CIDR").then(|| "10.244.0.7/24".to_string());
        let err = Network::from_vars(vars).unwrap_err();
        assert!(
            matches!(
                err,
                PlanError::Invalid {
                    var: "SA_LAB_POD_CIDR",
                    ..
                }
            ),
            "{err}"
        );
        let vars = |k: &str| (k == "SA_LAB_SERVICE_CIDR").then(|| "10.244.0.0/16".to_string());
        let err = Network::from_vars(vars)
            .unwrap()
            .check(&[], &[])
            .unwrap_err();
        assert!(matches!(err, PlanError::Overlap { .. }), "{err}");
    }
}
