use anyhow::Result;
use clap::Args;
use penni_model::{Shape, model_cost};

use crate::common::{self, human};

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// A .penni file, or a zoo model name (vgg16, vgg16avg, resnet18, resnet20, resnet56) built for --input.
    pub model: String,
    /// Input size for zoo models: CxHxW.
    #[arg(long, default_value = "3x32x32")]
    pub input: String,
    /// Number of classes for zoo models.
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Width multiplier for zoo models.
    #[arg(long, default_value_t = 1.0)]
    pub width: f32,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn shapes(s: &[Shape]) -> String {
    s.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ")
}

pub fn run(args: InspectArgs) -> Result<()> {
    let model = if common::is_zoo_name(&args.model) {
        let dims: Vec<usize> = args
            .input
            .split('x')
            .map(|d| d.parse())
            .collect::<Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--input must look like 3x32x32, got '{}'", args.input))?;
        let [c, h, w] = dims[..] else {
            anyhow::bail!("--input must look like 3x32x32, got '{}'", args.input)
        };
        common::build_zoo(&args.model, c, h, w, args.classes, args.width, 0)?
    } else {
        common::load_model(args.model.as_ref())?.model
    };
    let cost = model_cost(&model)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&cost)?);
        return Ok(());
    }
    println!(
        "model {} (input {}x{}x{})",
        model.name, model.input.channels, model.input.height, model.input.width
    );
    // columns as wide as their longest entry (ONNX node names can be long)
    let rows: Vec<[String; 4]> = cost
        .layers
        .iter()
        .map(|l| {
            [
                l.node.clone(),
                l.kind.to_string(),
                shapes(&l.input_shapes),
                l.output_shape.to_string(),
            ]
        })
        .collect();
    let w: [usize; 4] = std::array::from_fn(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0).max([5, 4, 5, 6][i]));
    println!(
        "{:<w0$} {:<w1$} {:<w2$} {:<w3$} {:>10} {:>10} {:>10} {:>10}",
        "layer",
        "type",
        "input",
        "output",
        "params",
        "params*",
        "MACs",
        "MACs*",
        w0 = w[0],
        w1 = w[1],
        w2 = w[2],
        w3 = w[3]
    );
    for (l, r) in cost.layers.iter().zip(&rows) {
        println!(
            "{:<w0$} {:<w1$} {:<w2$} {:<w3$} {:>10} {:>10} {:>10} {:>10}",
            r[0],
            r[1],
            r[2],
            r[3],
            human(l.params_all),
            human(l.params_paper),
            human(l.macs_all),
            human(l.macs_paper),
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
    }
    let t = &cost.totals;
    println!(
        "total: {} parameters ({}), {} MACs ({}) per image",
        human(t.params_all),
        t.params_all,
        human(t.macs_all),
        t.macs_all
    );
    println!(
        "paper-style*: {} parameters ({}), {} MACs ({})",
        human(t.params_paper),
        t.params_paper,
        human(t.macs_paper),
        t.macs_paper
    );
    if t.macs_basis > 0 {
        println!(
            "  of which PENNI basis stages: {} MACs ({:.1}%), the part that pruning coefficients does not lower",
            human(t.macs_basis),
            100.0 * t.macs_basis as f64 / t.macs_paper.max(1) as f64
        );
    }
    println!("params/MACs count everything stored and computed (weights, bases, biases, batchnorm);");
    println!("* counts as the PENNI paper does: non-zero conv/linear weights and coefficients, conv/linear MACs only.");
    Ok(())
}
