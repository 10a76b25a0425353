//! Test models and data shared by the training tests.
#![allow(dead_code)]

use std::collections::BTreeMap;

use penni_data::{Dataset, Transform};
use penni_model::zoo::{GraphBuilder, InitRng};
use penni_model::{Conv2d, DecomposedConv2d, Input, Model, Op, Tensor};
use penni_train::TrainData;

/// Images whose class shows in a bright square's position: learnable in a few steps.
pub fn synthetic(n: usize, seed: u64) -> Dataset {
    let mut rng = InitRng::new(seed);
    let (h, w) = (8, 8);
    let mut images = vec![0u8; n * h * w];
    let mut labels = vec![0u16; n];
    for i in 0..n {
        let label = (rng.next_u64() % 4) as usize;
        labels[i] = label as u16;
        let img = &mut images[i * h * w..(i + 1) * h * w];
        for v in img.iter_mut() {
            *v = (rng.next_u64() % 60) as u8;
        }
        let (y0, x0) = ((label / 2) * 4, (label % 2) * 4);
        for y in y0..y0 + 4 {
            for x in x0..x0 + 4 {
                img[y * w + x] = 200;
            }
        }
    }
    Dataset {
        images,
        labels,
        channels: 1,
        height: h,
        width: w,
        num_classes: 4,
        class_names: (0..4).map(|c| c.to_string()).collect(),
    }
}

/// A small CNN with one decomposed conv, batchnorm, residual add, pooling and a linear layer.
pub fn small_model(seed: u64) -> Model {
    let mut b = GraphBuilder::new(
        "small",
        Input {
            name: "input".into(),
            channels: 1,
            height: 8,
            width: 8,
        },
        seed,
    );
    let x = b.input();
    let x = b.conv_bn("stem.", &x, 6, 3, 1, true);
    let y = b.conv_bn("body.", &x, 6, 3, 1, false);
    let s = b.add("add", &[&x, &y]);
    let r = b.relu("relu", &s);
    let p = b.max_pool("pool", &r, 2, 2);
    let f = b.flatten("flat", &p);
    let o = b.linear("fc", &f, 4);
    let mut m = b.finish(&o).unwrap();
    decompose_node(&mut m, "body.conv", 4, seed);
    m
}

/// Replaces a conv by a decomposed conv with random factors (tests need no SVD).
pub fn decompose_node(m: &mut Model, name: &str, d: usize, seed: u64) {
    let mut rng = InitRng::new(seed + 7);
    let node = m.node_mut(name).unwrap();
    let Op::Conv2d(c) = node.op.clone() else {
        panic!("{name} is not a conv")
    };
    let kk = c.kernel[0] * c.kernel[1];
    let rows = c.out_channels * c.in_channels / c.groups;
    node.op = Op::DecomposedConv2d(DecomposedConv2d {
        conv: Conv2d {
            in_channels: c.in_channels,
            out_channels: c.out_channels,
            kernel: c.kernel,
            stride: c.stride,
            padding: c.padding,
            dilation: c.dilation,
            groups: c.groups,
            bias: true,
        },
        num_bases: d,
        basis_quant: None,
    });
    node.params = BTreeMap::from([
        (
            "bases".into(),
            Tensor::new(vec![d, kk], (0..d * kk).map(|_| rng.normal() * 0.5).collect()).unwrap(),
        ),
        (
            "coefficients".into(),
            Tensor::new(vec![rows, d], (0..rows * d).map(|_| rng.normal() * 0.3).collect()).unwrap(),
        ),
        (
            "bias".into(),
            Tensor::new(vec![c.out_channels], (0..c.out_channels).map(|_| rng.normal() * 0.1).collect()).unwrap(),
        ),
    ]);
}

/// The synthetic data with a fixed normalisation and light augmentation.
pub fn data(ds: &Dataset) -> TrainData<'_> {
    let t = Transform {
        mean: vec![0.3],
        std: vec![0.3],
        ..Default::default()
    };
    TrainData {
        train: ds,
        test: Some(ds),
        eval_name: "test",
        train_transform: Transform {
            crop_padding: 1,
            ..t.clone()
        },
        test_transform: t,
    }
}
