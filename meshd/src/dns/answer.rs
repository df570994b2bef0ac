//! What meshd's DNS answers, as a pure function of a snapshot and the virtual IPs: no
//! lock, no I/O. The server (`mod.rs`) only moves packets.
//!
//! Names (domain `mesh` by default): `SERVICE.mesh` A (the service's virtual IP on this
//! host, or its healthy instances' addresses for `passthrough` services);
//! `SUBSET.SERVICE.mesh` A (the subset's virtual IP); `_PROTOCOL._tcp.SERVICE.mesh` SRV
//! (healthy instances, targets `NODE.node.mesh` with their A records as additionals);
//! `NODE.node.mesh` A (the member's address). Other types of a name that exists: an
//! empty answer. Unknown names in the domain: NXDOMAIN. Names outside it: REFUSED.
//!
//! Must not: do I/O, forward or recurse: names outside the domain are REFUSED.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::state::Snapshot;

/// A decision about one question.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// NOERROR with these answers (possibly none: the name exists, the type does not)
    /// and additionals.
    Records { answers: Vec<Record>, additionals: Vec<Record> },
    /// NXDOMAIN, with the zone's SOA for negative caching.
    NxDomain,
    /// Not our domain: we are no open resolver.
    Refused,
}

#[derive(Clone)]
pub struct Zone {
    pub domain: Name,
    pub ttl: u32,
}

impl Zone {
    pub fn new(domain: &str, ttl: u32) -> Result<Zone, hickory_proto::ProtoError> {
        let mut domain = Name::from_ascii(domain)?.to_lowercase();
        domain.set_fqdn(true);
        Ok(Zone { domain, ttl })
    }

    /// The zone's SOA, for the authority section of negative answers.
    pub fn soa(&self) -> Record {
        let mname =
            Name::from_ascii("ns").and_then(|n| n.append_domain(&self.domain)).unwrap_or_else(|_| self.domain.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.domain))
            .unwrap_or_else(|_| self.domain.clone());
        Record::from_rdata(
            self.domain.clone(),
            self.ttl,
            RData::SOA(SOA::new(mname, rname, 1, 3600, 600, 86_400, self.ttl)),
        )
    }

    /// Answers `qtype` for `qname`. `vips` are this host's virtual IPs by name
    /// (`reviews`, `v1.reviews`); `shuffle` rotates passthrough answers.
    pub fn answer(
        &self,
        snap: &Snapshot,
        vips: &BTreeMap<String, Ipv4Addr>,
        qname: &LowerName,
        qtype: RecordType,
        shuffle: usize,
    ) -> Answer {
        let name: Name = qname.into();
        if !self.domain.zone_of(&name) {
            return Answer::Refused;
        }
        let labels: Vec<String> = name
            .iter()
            .take(usize::from(name.num_labels() - self.domain.num_labels()))
            .map(|l| String::from_utf8_lossy(l).to_lowercase())
            .collect();
        let records = |rs: Vec<Record>| Answer::Records { answers: rs, additionals: vec![] };
        let a = |ip: Ipv4Addr| Record::from_rdata(name.clone(), self.ttl, RData::A(A(ip)));
        let services = &snap.services;

        match labels.as_slice() {
            // The apex.
            [] => records(if qtype == RecordType::SOA { vec![self.soa()] } else { vec![] }),
            // NODE.node.mesh
            [node, n] if n == "node" => match snap.members.iter().find(|m| m.name == *node) {
                Some(m) => match (qtype, m.addr.ip()) {
                    (RecordType::A, IpAddr::V4(ip)) => records(vec![a(ip)]),
                    _ => records(vec![]),
                },
                None => Answer::NxDomain,
            },
            // _PROTOCOL._tcp.SERVICE.mesh
            [proto, tcp, service] if tcp == "_tcp" => {
                let Some(s) = services.get(service.as_str()) else { return Answer::NxDomain };
                let healthy: Vec<_> = s.healthy().collect();
                if proto.strip_prefix('_') != Some(s.protocol.as_str()) {
                    return Answer::NxDomain;
                }
                if qtype != RecordType::SRV {
                    return records(vec![]);
                }
                let mut answers = Vec::new();
                let mut additionals = Vec::new();
                for i in healthy {
                    let Ok(target) =
                        Name::from_ascii(format!("{}.node", i.node)).and_then(|n| n.append_domain(&self.domain))
                    else {
                        continue;
                    };
                    answers.push(Record::from_rdata(
                        name.clone(),
                        self.ttl,
                        RData::SRV(SRV::new(0, 1, i.port, target.clone())),
                    ));
                    if let Some(IpAddr::V4(ip)) = snap.members.iter().find(|m| m.name == i.node).map(|m| m.addr.ip()) {
                        if !additionals.iter().any(|r: &Record| r.name == target) {
                            additionals.push(Record::from_rdata(target, self.ttl, RData::A(A(ip))));
                        }
                    }
                }
                Answer::Records { answers, additionals }
            }
            // SERVICE.mesh
            [service] => {
                let Some(s) = services.get(service.as_str()) else { return Answer::NxDomain };
                if qtype != RecordType::A {
                    return records(vec![]);
                }
                if s.passthrough {
                    let mut ips: Vec<Ipv4Addr> = s
                        .healthy()
                        .filter_map(|i| match i.address {
                            IpAddr::V4(ip) => Some(ip),
                            IpAddr::V6(_) => None,
                        })
                        .collect();
                    ips.sort();
                    ips.dedup();
                    if !ips.is_empty() {
                        let k = shuffle % ips.len();
                        ips.rotate_left(k);
                    }
                    return records(ips.into_iter().map(a).collect());
                }
                match vips.get(service.as_str()) {
                    Some(ip) => records(vec![a(*ip)]),
                    None => records(vec![]),
                }
            }
            // SUBSET.SERVICE.mesh
            [subset, service] => match vips.get(&format!("{subset}.{service}")) {
                Some(ip) if qtype == RecordType::A => records(vec![a(*ip)]),
                Some(_) => records(vec![]),
                None => Answer::NxDomain,
            },
            _ => Answer::NxDomain,
        }
    }
}
