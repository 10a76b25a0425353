//! Training on a GPU through burn's wgpu backend gives what training on the CPU gives. In CI this
//! runs on Mesa's software Vulkan driver (lavapipe), installed by scripts/gpu-test.sh.
#![cfg(feature = "wgpu")]

mod common;

use common::{data, small_model, synthetic};
use penni_train::{LrSchedule, RunOptions, TrainDevice, TrainOptions, train};

#[test]
fn wgpu_training_matches_cpu_training() {
    if let Err(e) = TrainDevice::Wgpu.open() {
        penni_testkit::require(
            None::<()>,
            &format!("a wgpu adapter ({e})"),
            "install mesa-vulkan-drivers (scripts/gpu-test.sh)",
        );
        return;
    }
    let ds = synthetic(96, 3);
    let model = small_model(5);
    let opts = TrainOptions {
        epochs: 1,
        batch_size: 16,
        lr: 0.05,
        momentum: 0.9,
        weight_decay: 1e-4,
        schedule: LrSchedule::Constant,
        l1_coefficients: 1e-3,
        ..Default::default()
    };
    let run = |device| {
        let r = RunOptions {
            device,
            ..Default::default()
        };
        train(&model, &data(&ds), &opts, &r).expect("training runs")
    };
    let cpu = run(TrainDevice::Cpu);
    let gpu = run(TrainDevice::Wgpu);
    // 6 SGD steps: float differences between the backends' kernels stay far below this
    for (c, g) in cpu.history.iter().zip(&gpu.history) {
        assert!(
            (c.train_loss - g.train_loss).abs() <= 2e-3 * c.train_loss.abs().max(1.0),
            "epoch {}: train loss cpu {} vs wgpu {}",
            c.epoch,
            c.train_loss,
            g.train_loss
        );
    }
    for (a, b) in cpu.model.nodes.iter().zip(&gpu.model.nodes) {
        for (name, t) in &a.params {
            let u = &b.params[name];
            let scale = t.data.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-3);
            let diff = t.data.iter().zip(&u.data).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-2 * scale, "{}.{name}: max difference {diff} (scale {scale})", a.name);
        }
    }
}
