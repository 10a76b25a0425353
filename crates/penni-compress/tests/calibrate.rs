//! Static activation quantization on zoo models, dense and PENNI: a quantize-dequantize node on
//! every tensor a conv, linear layer or add reads, the calibrated model close to the f32 one at
//! 8 bits and further at 4, running on penni's engine (both backends) as the reference does.

use penni_compress::{Calibration, CalibrationOptions, DecomposeOptions, calibrate_activations, decompose};
use penni_model::reference::{Activation as Batch, forward};
use penni_model::zoo::{ZooOptions, build};
use penni_model::{Activation, Model, Op, passes};

fn input(m: &Model, n: usize, seed: u64) -> Batch {
    Batch {
        n,
        shape: m.input_shape(),
        data: penni_engine::pseudo_random_input(m.input_shape().numel() * n, seed),
    }
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn calibrated_models_stay_close_and_run_on_the_engine() {
    let dense = build(
        "resnet20",
        &ZooOptions {
            width_multiplier: 0.25,
            seed: 3,
            ..Default::default()
        },
    )
    .unwrap();
    let (penni, _) = decompose(
        &dense,
        &DecomposeOptions {
            d: 3,
            ..Default::default()
        },
    )
    .unwrap();
    for model in [dense, penni] {
        let mut m = model.clone();
        passes::fold_batchnorms(&mut m);
        let batches: Vec<Batch> = (0..3).map(|i| input(&m, 4, 10 + i)).collect();
        let x = input(&m, 4, 99);
        let want = forward(&m, &x).unwrap().data;
        let mut errs = vec![];
        for (bits, method) in [(8, Calibration::MinMax), (8, Calibration::Mse), (4, Calibration::MinMax)] {
            let opts = CalibrationOptions {
                bits,
                method,
                percentile: 99.99,
                basis_bits: 8,
            };
            let (q, ranges) = calibrate_activations(&m, &batches, &opts).unwrap();
            let quantizers = q
                .nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Activation(Activation::QuantizeDequantize { .. })))
                .count();
            // the input and the inputs of every conv and add (shared ones once), and the basis
            // maps of every PENNI layer
            let basis_maps = q
                .nodes
                .iter()
                .filter(|n| matches!(&n.op, Op::DecomposedConv2d(d) if d.basis_quant.is_some()))
                .count();
            let penni_layers = m.nodes.iter().filter(|n| matches!(n.op, Op::DecomposedConv2d(_))).count();
            assert_eq!(basis_maps, penni_layers);
            assert_eq!(quantizers + basis_maps, ranges.len());
            assert!(quantizers >= 20, "{quantizers}");
            // calibrating again adds nothing: every such tensor is quantized already
            let (again, more) = calibrate_activations(&q, &batches, &opts).unwrap();
            assert!(more.is_empty() && again.nodes.len() == q.nodes.len());
            let got = forward(&q, &x).unwrap().data;
            errs.push(max_rel(&got, &want));
            // the engine runs the quantize-dequantize steps; a value on a rounding edge may
            // land one level over in one of them (other summation order), hence the tolerance
            let opts = penni_engine::EngineOptions {
                threads: 2,
                ..Default::default()
            };
            for planar in [false, true] {
                let mut plan = penni_engine::testing::plan_backend(&q, 4, &opts, planar, None).unwrap();
                let e = plan.run(&x.data).unwrap();
                let diff = max_rel(e, &got);
                assert!(diff < 0.02, "{} {bits} bits planar={planar}: engine vs reference {diff}", m.name);
                // conv -> quantize -> add -> relu -> quantize is one epilogue: no add step is left
                let steps = plan.describe();
                let adds = steps.iter().filter(|s| s.contains("add")).count();
                assert!(adds >= 9, "{steps:#?}");
                assert!(steps.iter().all(|s| !s.contains("add") || s.contains("conv")), "{steps:#?}");
            }
        }
        assert!(errs[0] < 0.05 && errs[1] < 0.05, "{}: 8-bit error {errs:?}", m.name);
        assert!(errs[2] > errs[0], "{}: 4 bits must cost more than 8 ({errs:?})", m.name);
    }
}
