//! Test hosts in network namespaces: one namespace per node, a veth pair each, joined by
//! a bridge, addresses from 198.18.0.0/15; links are cut with nftables inside the
//! namespaces. Needs root (CI is root). Setup failures panic with what failed: a test
//! that cannot build its network fails, it never passes silently. Everything is removed
//! on drop, also when the test fails.

use std::net::Ipv4Addr;
use std::process::Command;

/// Runs a command that must succeed; panics with its output otherwise.
pub fn must(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("cannot run {program} {args:?} ({e}): the namespace tests need iproute2 and nftables, and root")
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}\nthe namespace tests need root (CI runs as root)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and `n` namespaced hosts on 198.18.SUBNET.1 .. .n.
pub struct Network {
    pub subnet: u8,
    tag: String,
    hosts: usize,
}

impl Network {
    pub fn new(subnet: u8, hosts: usize) -> Network {
        // Short and unique per test process: interface names are at most 15 bytes.
        let tag = format!("m{}", std::process::id() % 100_000);
        let net = Network { subnet, tag, hosts: 0 };
        must("ip", &["link", "add", &net.bridge(), "type", "bridge"]);
        let mut net = net;
        must("ip", &["link", "set", &net.bridge(), "up"]);
        for i in 1..=hosts {
            net.add_host(i);
        }
        net
    }

    fn bridge(&self) -> String {
        format!("{}b", self.tag)
    }

    /// The namespace of host `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.tag)
    }

    pub fn ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, self.subnet, u8::try_from(i).expect("host number"))
    }

    fn add_host(&mut self, i: usize) {
        let ns = self.ns(i);
        let outside = format!("{}v{i}", self.tag);
        must("ip", &["netns", "add", &ns]);
        self.hosts = i;
        must("ip", &["link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        must("ip", &["link", "set", &outside, "master", &self.bridge(), "up"]);
        let addr = format!("{}/24", self.ip(i));
        must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
    }

    /// Cuts every link between `side` and the other hosts (both directions), with
    /// nftables rules in each namespace of `side`.
    pub fn partition(&self, side: &[usize]) {
        let others: Vec<String> =
            (1..=self.hosts).filter(|i| !side.contains(i)).map(|i| self.ip(i).to_string()).collect();
        let set = others.join(", ");
        for &i in side {
            let rules = format!(
                "table inet meshcut {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n}}\n"
            );
            let path = std::env::temp_dir().join(format!("{}-cut-{i}.nft", self.tag));
            std::fs::write(&path, rules).expect("nft rules");
            must("ip", &["netns", "exec", &self.ns(i), "nft", "-f", &path.display().to_string()]);
            let _ = std::fs::remove_file(path);
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for i in 1..=self.hosts {
            let _ = Command::new("ip")
                .args(["netns", "exec", &self.ns(i), "nft", "delete", "table", "inet", "meshcut"])
                .output();
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for i in 1..=self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(i)]).output();
            let _ = Command::new("ip").args(["link", "del", &format!("{}v{i}", self.tag)]).output();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge()]).output();
    }
}

impl Network {
    /// A node of `block` that runs in host `i`'s namespace, bound to its address on port
    /// 7946 (each namespace has its own ports).
    pub fn node(&self, block: &crate::Block, i: usize, top: &str, extra: &str) -> crate::Node {
        let node = crate::Node::prepare_with(block, u8::try_from(i).expect("host"), top, extra).in_netns(&self.ns(i));
        let text = std::fs::read_to_string(&node.config).expect("config");
        let bind = format!("bind = \"{}:0\"", block.node_ip(u8::try_from(i).expect("host")));
        assert!(text.contains(&bind), "the harness config has {bind}");
        let text = text.replace(&bind, &format!("bind = \"{}:7946\"", self.ip(i)));
        std::fs::write(&node.config, text).expect("config");
        node
    }

    /// The `join` line that points at host `i`.
    pub fn seed(&self, i: usize) -> String {
        format!("join = [\"{}:7946\"]", self.ip(i))
    }
}
