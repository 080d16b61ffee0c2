use std::collections::HashSet;

use super::*;

const ID: ServerId = ServerId::new([0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef]);

#[test]
fn every_id_has_the_first_octet_the_server_id_and_a_nonce() {
    for bits in 0..=6 {
        let rotation = ConfigRotation::new(bits).unwrap();
        let mut generator = ServerIdGenerator::new(ID, rotation);
        assert_eq!(generator.cid_len(), CID_LEN);
        for _ in 0..100 {
            let cid = generator.generate_cid();
            assert_eq!(cid.len(), 20, "QUIC v1's longest connection ID");
            assert_eq!(cid[0] >> 5, bits, "config rotation in the top 3 bits");
            assert_eq!(
                usize::from(cid[0] & 0x1f),
                cid.len() - 1,
                "length of the rest in the low 5 bits"
            );
            assert_eq!(cid[0], generator.first_octet());
            assert_eq!(
                cid[SERVER_ID_RANGE],
                ID.octets(),
                "server id in plaintext at octets 1..9"
            );
        }
    }
}

#[test]
fn rotation_seven_is_reserved() {
    assert!(ConfigRotation::new(7).is_none(), "0b111: unroutable in the draft");
    assert!(ConfigRotation::new(8).is_none());
    assert_eq!(ConfigRotation::default().bits(), 0);
}

#[test]
fn ids_are_distinct() {
    let mut generator = ServerIdGenerator::new(ID, ConfigRotation::default());
    let nonces: HashSet<Vec<u8>> = (0..10_000)
        .map(|_| generator.generate_cid()[SERVER_ID_RANGE.end..].to_vec())
        .collect();
    assert_eq!(nonces.len(), 10_000);
}

#[test]
fn a_relay_without_a_server_id_derives_it_from_its_instance_name() {
    // Pinned: a change would send every agent of a running fleet to new ids at an upgrade.
    // printf relay-1 | sha256sum: 4045d2ef356c7f67...
    assert_eq!(ServerId::from_instance("relay-1").to_string(), "4045d2ef356c7f67");
    assert_eq!(ServerId::from_instance("relay-1"), ServerId::from_instance("relay-1"));
    let mut one = ServerIdGenerator::new(ServerId::from_instance("relay-1"), ConfigRotation::default());
    let mut two = ServerIdGenerator::new(ServerId::from_instance("relay-2"), ConfigRotation::default());
    assert_ne!(one.server_id(), two.server_id());
    assert_ne!(one.generate_cid()[SERVER_ID_RANGE], two.generate_cid()[SERVER_ID_RANGE]);
}

#[test]
fn a_server_id_is_sixteen_hex_digits() {
    assert_eq!("0123456789abcdef".parse(), Ok(ID));
    assert_eq!("0123456789ABCDEF".parse(), Ok(ID));
    assert_eq!("0x0123456789abcdef".parse(), Ok(ID), "as AWS NLB writes it");
    assert_eq!(ID.to_string(), "0123456789abcdef");
    assert_eq!(format!("{ID:?}"), "ServerId(0123456789abcdef)");
    assert_eq!(ServerId::try_from(ID.to_string()), Ok(ID));
}

#[test]
fn a_bad_server_id_is_refused_with_its_cause() {
    let parse = |text: &str| text.parse::<ServerId>().unwrap_err();
    assert_eq!(parse(""), ServerIdError::Length(0));
    assert_eq!(parse("0123456789abcde"), ServerIdError::Length(15));
    assert_eq!(parse("0123456789abcdef0"), ServerIdError::Length(17));
    assert_eq!(parse("0x0123"), ServerIdError::Length(4));
    assert_eq!(parse("0123456789abcdeg"), ServerIdError::NotHex(16));
    assert_eq!(
        parse("0x012345678gabcdef"),
        ServerIdError::NotHex(12),
        "counted from the start"
    );
    assert_eq!(parse("0123 456789abcdef"), ServerIdError::NotHex(5));
    assert_eq!(parse("01234567é9abcdef"), ServerIdError::NotHex(9));
    assert_eq!(
        parse("abc").to_string(),
        "a server id is 16 hex digits (8 octets, optionally after 0x), not 3"
    );
}
