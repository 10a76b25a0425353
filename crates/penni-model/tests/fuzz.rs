//! Hostile `.penni` files: mutated, truncated and random bytes must give an error, never a panic
//! or a huge allocation. Raise PROPTEST_CASES for a longer run.

use std::path::Path;
use std::sync::OnceLock;

use penni_model::io;
use penni_model::zoo::{self, ZooOptions};
use proptest::prelude::*;

/// The corpus in the current format (`v3`, positions mostly as Rice-coded gaps) or in format 2
/// (bit masks and u32 indices), so that every decoder meets hostile bytes.
fn valid(v3: bool) -> &'static Vec<u8> {
    static BYTES: OnceLock<[Vec<u8>; 2]> = OnceLock::new();
    &BYTES.get_or_init(|| {
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
        // quantized tensors, so the packed decoder is too: a dense one (8 bits) and a pruned
        // one (4 bits, stored with a bit mask of its non-zeros)
        let convs: Vec<usize> = (1..m.nodes.len())
            .filter(|&i| matches!(m.nodes[i].op, penni_model::Op::Conv2d(_)))
            .collect();
        // and one pruned to a tenth (f32, its positions as Rice-coded gaps)
        for (i, v) in m.nodes[convs[2]].params.get_mut("weight").unwrap().data.iter_mut().enumerate() {
            if i % 10 != 3 {
                *v = 0.0;
            }
        }
        for (node, bits, zero_every) in [(convs[0], 8u8, 0usize), (convs[1], 4, 3)] {
            let w = m.nodes[node].params.get_mut("weight").unwrap();
            let per = w.data.len() / w.shape[0];
            for chunk in w.data.chunks_mut(per) {
                // pruned first, then quantized, as in penni
                for (i, v) in chunk.iter_mut().enumerate() {
                    if zero_every > 0 && i % zero_every != 0 {
                        *v = 0.0;
                    }
                }
                let max = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
                let s = penni_model::grid::canonical_scale(max, bits);
                let q = ((1 << (bits - 1)) - 1) as f32;
                for v in chunk.iter_mut() {
                    *v = (*v / s).round_ties_even().clamp(-q, q) * s;
                }
            }
        }
        let forms = |bytes: &[u8]| -> Vec<String> {
            let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
            st.names()
                .iter()
                .map(|n| {
                    n.split_once('#')
                        .map_or("", |(_, f)| f)
                        .trim_end_matches(char::is_numeric)
                        .to_string()
                })
                .collect()
        };
        let v3 = io::to_bytes(&m, &io::Extras::default()).unwrap();
        let v2 = io::to_bytes_as(&m, &io::Extras::default(), 2).unwrap();
        for (bytes, wanted) in [
            (&v3, &["q", "mask", "gaps", "qscales"][..]),
            (&v2, &["q", "mask", "indices", "qscales"][..]),
        ] {
            let found = forms(bytes);
            for form in wanted {
                assert!(found.iter().any(|f| f == form), "no #{form} tensor in the corpus: {found:?}");
            }
        }
        assert!(!forms(&v2).iter().any(|f| f == "gaps"));
        [v2, v3]
    })[v3 as usize]
}

/// The file with tensor `pick`'s bytes changed by `flips` and the checksum recomputed, so that
/// the decoders (not the checksum) meet the damage.
fn resigned(v3: bool, pick: usize, flips: &[(usize, u8)]) -> Vec<u8> {
    let bytes = valid(v3);
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let victim = names[pick % names.len()];
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let v = st.tensor(n).unwrap();
            (n.to_string(), v.dtype(), v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    for t in tensors.iter_mut().filter(|t| t.0 == victim) {
        for &(at, v) in flips {
            if !t.3.is_empty() {
                let i = at % t.3.len();
                t.3[i] = v;
            }
        }
    }
    let mut h = crc32fast::Hasher::new();
    for (name, _, _, data) in &tensors {
        h.update(name.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    meta.insert("checksum".into(), format!("{:08x}", h.finalize()));
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, dt, shape, data)| (n.clone(), safetensors::tensor::TensorView::new(*dt, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize(views, Some(meta)).unwrap()
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
    fn mutated_files_never_panic(v3 in any::<bool>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let mut bytes = valid(v3).clone();
        for (at, v) in flips {
            let i = at % bytes.len();
            bytes[i] = v;
        }
        parse(&bytes);
        bytes.truncate(cut % (bytes.len() + 1));
        parse(&bytes);
    }

    /// Damaged tensor data behind a valid checksum: indices, masks, gaps, packed codes and scales
    /// reach their decoders.
    #[test]
    fn damaged_tensors_never_panic(v3 in any::<bool>(), pick in any::<usize>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6)) {
        parse(&resigned(v3, pick, &flips));
    }

    /// Edits inside the JSON header (shapes, channel counts, names) are the dangerous ones.
    #[test]
    fn mutated_headers_never_panic(v3 in any::<bool>(), at in 0usize..4096, digit in 0u8..10) {
        let mut bytes = valid(v3).clone();
        let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let i = 8 + at % header_len;
        if bytes[i].is_ascii_digit() {
            bytes[i] = b'0' + digit;
            // the checksum covers tensors, not the graph: this reaches graph validation
            parse(&bytes);
        }
    }
}
