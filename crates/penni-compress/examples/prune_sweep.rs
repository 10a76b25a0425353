//! How much pruning at threshold s and shrinking would remove from a retrained PENNI model,
//! before fine-tuning (structure only, no accuracy): helps choose `s` and lambda.
//! `cargo run --release -p penni-compress --example prune_sweep -- RETRAINED.penni [s ...]`
use penni_compress::{PruneOptions, prune, shrink};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: prune_sweep RETRAINED.penni [s ...]")?;
    let model = penni_model::io::load(std::path::Path::new(path))?;
    let base = penni_model::model_cost(&model)?.totals;
    let ss: Vec<f32> = if args.len() > 1 {
        args[1..].iter().map(|s| s.parse()).collect::<Result<_, _>>()?
    } else {
        vec![0.5, 1.0, 1.5, 2.0, 2.5]
    };
    println!(
        "{path}: {} params, {} MACs (paper-style) before pruning",
        base.params_paper, base.macs_paper
    );
    for s in ss {
        let (pruned, _) = prune(&model, &PruneOptions { s, ..Default::default() })?;
        let (shrunk, _) = shrink(&pruned)?;
        let t = penni_model::model_cost(&shrunk)?.totals;
        println!(
            "s = {s:.2}: params {} ({:.1}% of the input model), MACs {} ({:.1}%)",
            t.params_paper,
            100.0 * t.params_paper as f64 / base.params_paper as f64,
            t.macs_paper,
            100.0 * t.macs_paper as f64 / base.macs_paper as f64
        );
    }
    Ok(())
}
