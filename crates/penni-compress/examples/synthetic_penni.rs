//! Writes a zoo model (3x32x32, 10 classes, seeded random weights and batchnorm statistics) and
//! a PENNI version of it without training: SVD decomposition with d = 5, every decomposed layer's
//! coefficients and every 1x1 conv pruned by magnitude to a target sparsity (the paper reports
//! about 97-98%), then shrunk. Random pruning kills few whole channels, so the PENNI model keeps
//! nearly full widths: a conservative stand-in for a trained PENNI model in speed benchmarks.
//! usage: synthetic_penni ZOO_NAME OUT_DIR [SPARSITY]

use std::path::PathBuf;

use penni_compress::{DecomposeOptions, decompose, shrink};
use penni_model::zoo::{self, InitRng, ZooOptions};
use penni_model::{Op, io};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: synthetic_penni ZOO_NAME OUT_DIR [SPARSITY]".into());
    }
    let (name, out) = (&args[1], PathBuf::from(&args[2]));
    let sparsity: f64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(0.97);
    std::fs::create_dir_all(&out)?;
    let mut dense = zoo::build(name, &ZooOptions::default())?;
    let mut rng = InitRng::new(42);
    for node in &mut dense.nodes {
        if let Op::BatchNorm2d { .. } = node.op {
            for (p, t) in node.params.iter_mut() {
                for v in t.data.iter_mut() {
                    *v = match p.as_str() {
                        "weight" | "running_var" => 0.5 + rng.uniform(),
                        _ => 0.1 * rng.normal(),
                    };
                }
            }
        }
    }
    io::save(&dense, &out.join(format!("{name}-dense.penni")))?;
    let (mut m, _) = decompose(&dense, &DecomposeOptions::default())?;
    for node in &mut m.nodes {
        let key = match &node.op {
            Op::DecomposedConv2d(_) => "coefficients",
            Op::Conv2d(c) if c.kernel == [1, 1] => "weight",
            _ => continue,
        };
        let t = node.params.get_mut(key).expect("validated");
        let mut mags: Vec<f32> = t.data.iter().map(|v| v.abs()).collect();
        mags.sort_by(f32::total_cmp);
        let cut = mags[((mags.len() as f64 * sparsity) as usize).min(mags.len() - 1)];
        for v in t.data.iter_mut() {
            if v.abs() < cut {
                *v = 0.0;
            }
        }
    }
    let (m, report) = shrink(&m)?;
    io::save(&m, &out.join(format!("{name}-penni.penni")))?;
    let (a, b) = (penni_model::model_cost(&dense)?.totals, penni_model::model_cost(&m)?.totals);
    println!(
        "{name}: params {} -> {} ({:.1}% removed), MACs {} -> {} ({:.1}% removed), {} channels removed by shrinking",
        a.params_all,
        b.params_all,
        100.0 * (1.0 - b.params_all as f64 / a.params_all as f64),
        a.macs_all,
        b.macs_all,
        100.0 * (1.0 - b.macs_all as f64 / a.macs_all as f64),
        report.removed_channels
    );
    Ok(())
}
