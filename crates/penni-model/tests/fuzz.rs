//! Hostile `.penni` files: mutated, truncated and random bytes must give an error, never a panic
//! or a huge allocation. Raise PROPTEST_CASES for a longer run.

use std::path::Path;
use std::sync::OnceLock;

use penni_model::io;
use penni_model::zoo::{self, ZooOptions};
use proptest::prelude::*;

fn valid() -> &'static Vec<u8> {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut m = zoo::build(
            "resnet20",
            &ZooOptions {
                width_multiplier: 0.25,
                height: 8,
                width: 8,
                ..Default::default()
            },
        )
        .unwrap();
        // one sparse tensor, so the sparse decoder is exercised too
        for v in m.nodes[0].params.get_mut("weight").unwrap().data.iter_mut().skip(1).step_by(2) {
            *v = 0.0;
        }
        for v in m.nodes[0].params.get_mut("weight").unwrap().data.iter_mut().skip(2).step_by(3) {
            *v = 0.0;
        }
        io::to_bytes(&m, &io::Extras::default()).unwrap()
    })
}

fn parse(bytes: &[u8]) {
    let _ = io::from_bytes(bytes, Path::new("fuzz.penni"));
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        parse(&bytes);
    }

    #[test]
    fn mutated_files_never_panic(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut bytes = valid().clone();
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        parse(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        parse(&bytes);
    }

    /// Edits inside the JSON header (shapes, channel counts, names) are the dangerous ones.
    #[test]
    fn mutated_headers_never_panic(at in 0usize..4096, digit in 0u8..10) {
        let mut bytes = valid().clone();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let i = 8 + at % header_len;
        if bytes[i].is_ascii_digit() {
            bytes[i] = b'0' + digit;
            // the checksum covers tensors, not the graph: this reaches graph validation
            parse(&bytes);
        }
    }
}
