//! The DNS fast path, at the byte level: a strict reader for the one shape of query that
//! resolvers send (one question, no compression, at most an EDNS OPT record), and the
//! copy of a response encoded in advance. Anything else goes to the full decoder.
//!
//! A response encoded in advance carries the question in lower case; the copy takes the
//! query's ID, its RD bit and the question's bytes as sent (resolvers randomise case and
//! check it comes back), which have the same length, so every offset and compression
//! pointer in the response stays right.
//!
//! Must not: answer anything it cannot answer exactly as the full path would (it
//! declines, and the full path answers).

/// The DNS header's length.
pub const HEADER: usize = 12;
/// Without EDNS a UDP response holds at most 512 bytes (RFC 1035).
pub const UDP_PLAIN: usize = 512;
/// The UDP payload meshd advertises and uses at most, whatever the client offers: the
/// size that avoids IP fragmentation on every path (DNS flag day 2020).
pub const UDP_EDNS: u16 = 1232;
/// The OPT record meshd appends when the query had one: root name, type 41, our payload
/// size, extended rcode 0, version 0, no flags, no options.
pub const OPT: [u8; 11] = [0, 0, 41, (UDP_EDNS >> 8) as u8, (UDP_EDNS & 0xff) as u8, 0, 0, 0, 0, 0, 0];
/// The longest name on the wire, its root label included (RFC 1035 3.1).
pub const NAME_MAX: usize = 255;
/// The longest fast-path key: a name and a type.
pub const KEY_MAX: usize = NAME_MAX + 2;

/// A query of the common shape, read in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// The question name's length on the wire, from offset 12, its root label included.
    pub name_len: usize,
    pub qtype: u16,
    /// The UDP payload size the client offers, if it sent EDNS (version 0).
    pub edns: Option<u16>,
}

impl Question {
    /// Reads a query with one IN question and nothing else but a version 0 OPT record,
    /// or says no (the full decoder then handles the packet, whatever it is).
    pub fn read(p: &[u8]) -> Option<Question> {
        let header = p.get(..HEADER)?;
        // A query (QR clear), opcode QUERY, one question, no answers or authority.
        if header[2] & 0xf8 != 0 || header[4..10] != [0, 1, 0, 0, 0, 0] || header[10] != 0 || header[11] > 1 {
            return None;
        }
        let mut i = HEADER;
        loop {
            let len = usize::from(*p.get(i)?);
            if len == 0 {
                i += 1;
                break;
            }
            // Compression pointers (and the reserved label types) never start a question.
            if len > 63 {
                return None;
            }
            i += 1 + len;
            // The root label still follows: a name whose labels fill 255 bytes is over.
            if i - HEADER >= NAME_MAX {
                return None;
            }
        }
        let name_len = i - HEADER;
        let fixed = p.get(i..i + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        if fixed[2..4] != [0, 1] {
            return None;
        }
        i += 4;
        let edns = if header[11] == 1 {
            let opt = p.get(i..i + 11)?;
            // Root owner, type OPT, version 0 (the extended rcode of a query is 0 too).
            if opt[0] != 0 || opt[1..3] != [0, 41] || opt[5] != 0 || opt[6] != 0 {
                return None;
            }
            let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
            i += 11 + rdlen;
            Some(u16::from_be_bytes([opt[3], opt[4]]))
        } else {
            None
        };
        (i == p.len()).then_some(Question { name_len, qtype, edns })
    }

    /// The fast-path key: the lower-cased name and the type, written into `buf`. None
    /// when the name does not fit (never for a question [`Question::read`] accepted; the
    /// check keeps a bad caller from ending the task that serves DNS).
    pub fn key<'b>(&self, p: &[u8], buf: &'b mut [u8; KEY_MAX]) -> Option<&'b [u8]> {
        let name = p.get(HEADER..HEADER + self.name_len)?;
        let key = buf.get_mut(..self.name_len + 2)?;
        let (key_name, key_type) = key.split_at_mut(self.name_len);
        for (b, c) in key_name.iter_mut().zip(name) {
            *b = c.to_ascii_lowercase();
        }
        key_type.copy_from_slice(&self.qtype.to_be_bytes());
        Some(key)
    }

    /// The largest response the client accepts over UDP.
    pub fn udp_limit(&self) -> usize {
        udp_limit(self.edns)
    }
}

/// The largest UDP response for a client that offered `edns` (RFC 6891: below 512 reads
/// as 512), never more than meshd advertises.
pub fn udp_limit(edns: Option<u16>) -> usize {
    match edns {
        Some(size) => usize::from(size.clamp(UDP_PLAIN as u16, UDP_EDNS)),
        None => UDP_PLAIN,
    }
}

/// The key of a response encoded in advance for `name` (lower case, wire form) and `qtype`.
pub fn key_of(encoded_response: &[u8]) -> Option<Vec<u8>> {
    let q = read_question_of_response(encoded_response)?;
    let mut buf = [0u8; KEY_MAX];
    q.key(encoded_response, &mut buf).map(<[u8]>::to_vec)
}

fn read_question_of_response(p: &[u8]) -> Option<Question> {
    let mut i = HEADER;
    loop {
        let len = usize::from(*p.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        i += len;
    }
    let fixed = p.get(i..i + 4)?;
    Some(Question { name_len: i - HEADER, qtype: u16::from_be_bytes([fixed[0], fixed[1]]), edns: None })
}

/// The size of the copy of `template` answering `q`.
pub fn copy_len(template: &[u8], q: &Question) -> usize {
    template.len() + if q.edns.is_some() { OPT.len() } else { 0 }
}

/// Writes into `out` the response `template` (encoded with ID 0, RD clear and the
/// question in lower case) as the answer to `query`.
pub fn copy_response(template: &[u8], query: &[u8], q: &Question, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    out[..2].copy_from_slice(&query[..2]);
    out[2] |= query[2] & 0x01;
    let name = HEADER..HEADER + q.name_len;
    out[name.clone()].copy_from_slice(&query[name]);
    if q.edns.is_some() {
        let count = u16::from_be_bytes([out[10], out[11]]).saturating_add(1);
        out[10..12].copy_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&OPT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::tests::query;
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn reads_the_common_query_shape_and_keys_it_in_lower_case() {
        let p = query("ReViEwS.MeSh.", RecordType::A, None);
        let q = Question::read(&p).expect("common shape");
        assert_eq!(q, Question { name_len: 14, qtype: 1, edns: None });
        let mut buf = [0u8; KEY_MAX];
        assert_eq!(q.key(&p, &mut buf), Some(&b"\x07reviews\x04mesh\x00\x00\x01"[..]));
        assert_eq!(q.udp_limit(), 512);

        let p = query("reviews.mesh.", RecordType::SRV, Some(4096));
        let q = Question::read(&p).expect("with EDNS");
        assert_eq!((q.qtype, q.edns, q.udp_limit()), (33, Some(4096), 1232));
        let q = Question::read(&query("a.mesh.", RecordType::A, Some(100))).expect("small EDNS");
        assert_eq!(q.udp_limit(), 512, "below 512 reads as 512");
    }

    #[test]
    fn leaves_every_other_shape_to_the_full_decoder() {
        let good = query("reviews.mesh.", RecordType::A, None);
        let mut response = good.clone();
        response[2] |= 0x80;
        let mut notify = good.clone();
        notify[2] |= 4 << 3;
        let mut two_questions = good.clone();
        two_questions[5] = 2;
        let mut pointer = good.clone();
        pointer[12] = 0xc0;
        let mut chaos = good.clone();
        let n = chaos.len();
        chaos[n - 1] = 3;
        let mut trailing = good.clone();
        trailing.push(0);
        let mut edns1 = query("reviews.mesh.", RecordType::A, Some(1232));
        let n = edns1.len();
        edns1[n - 5] = 1; // EDNS version 1
        for (what, p) in [
            ("a response", response),
            ("another opcode", notify),
            ("two questions", two_questions),
            ("a compression pointer", pointer),
            ("class CH", chaos),
            ("trailing bytes", trailing),
            ("EDNS version 1", edns1),
            ("a bare header", good[..12].to_vec()),
            ("a cut name", good[..15].to_vec()),
        ] {
            assert_eq!(Question::read(&p), None, "{what}");
        }
        let mut p = query("x.mesh.", RecordType::A, None);
        p.truncate(HEADER);
        for _ in 0..130 {
            p.extend_from_slice(&[1, b'a']);
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert_eq!(Question::read(&p), None, "a name over 255 bytes");
    }

    /// A name whose wire form is `len` bytes, its root label included.
    fn query_with_name_of(len: usize) -> Vec<u8> {
        let mut p = query("x.mesh.", RecordType::A, None);
        p.truncate(HEADER);
        let mut left = len - 1;
        while left > 0 {
            let mut label = (left - 1).min(63);
            // Never leave one byte: it could only be an empty label, the root.
            if left - 1 - label == 1 {
                label -= 1;
            }
            p.push(label as u8);
            p.extend(std::iter::repeat_n(b'a', label));
            left -= 1 + label;
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        p
    }

    #[test]
    fn names_of_250_to_260_bytes_are_read_up_to_255_and_keyed_without_panic() {
        for len in 250..=260 {
            let p = query_with_name_of(len);
            match Question::read(&p) {
                Some(q) => {
                    assert!(len <= NAME_MAX, "a {len}-byte name is over the limit");
                    assert_eq!(q.name_len, len);
                    let mut buf = [0u8; KEY_MAX];
                    assert_eq!(q.key(&p, &mut buf).map(<[u8]>::len), Some(len + 2));
                }
                None => assert!(len > NAME_MAX, "a {len}-byte name is legal"),
            }
        }
        // A question built by hand past the reader still cannot overrun the key.
        let p = query_with_name_of(256);
        let q = Question { name_len: 256, qtype: 1, edns: None };
        assert_eq!(q.key(&p, &mut [0u8; KEY_MAX]), None);
    }

    #[test]
    fn a_copied_response_carries_the_queries_id_rd_case_and_edns() {
        let mut template = Message::response(0, hickory_proto::op::OpCode::Query);
        template.metadata.authoritative = true;
        template.add_query(Query::query(Name::from_ascii("reviews.mesh.").expect("name"), RecordType::A));
        let template = template.to_vec().expect("encode");
        assert_eq!(key_of(&template).as_deref(), Some(&b"\x07reviews\x04mesh\x00\x00\x01"[..]));

        let p = query("REVIEWS.mesh.", RecordType::A, Some(1232));
        let q = Question::read(&p).expect("common");
        let mut out = Vec::new();
        copy_response(&template, &p, &q, &mut out);
        assert_eq!(out.len(), copy_len(&template, &q));
        let m = Message::from_vec(&out).expect("a DNS message");
        assert_eq!(m.metadata.id, 7);
        assert!(m.metadata.recursion_desired && m.metadata.authoritative);
        assert_eq!(m.queries[0].name().to_ascii(), "REVIEWS.mesh.");
        assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(UDP_EDNS));
    }
}
