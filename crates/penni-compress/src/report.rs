//! What each phase did, in numbers people can trust: accuracy, parameters and MACs counted two
//! ways, coefficient sparsity and kept channels/bases per layer. Rendered as a terminal table, as
//! JSON and as a small hand-written SVG chart; files are written atomically.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use penni_model::io::write_atomic;
use penni_model::{Model, Op, model_cost};
use serde::{Deserialize, Serialize};

use crate::admm::AdmmReport;
use crate::budget::{BudgetReport, BudgetStage, Target};
use crate::decompose::DecomposeReport;
use crate::error::{CompressError, Result};
use crate::prune::{PruneReport, ratio};
use crate::shrink::ShrinkReport;
use crate::tucker::TuckerReport;

/// What the "paper" figures count (penni_model::cost).
pub const COUNTING_PAPER: &str = "paper: non-zero conv/linear weights and PENNI coefficients; MACs of conv and linear layers, a decomposed conv as basis stage (H'W'*C*d*k*k) + combination stage (nnz(A)*H'W')";
/// What the "all" figures count.
pub const COUNTING_ALL: &str = "all: paper + bases, biases and batchnorm scale/shift (running statistics excluded); MACs + one per output element for each bias and batchnorm";

/// Parameters and multiply-accumulates of a model (batch 1), both ways.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostRecord {
    pub params_paper: u64,
    pub params_all: u64,
    pub macs_paper: u64,
    pub macs_all: u64,
}

/// One channel-owning layer (conv, decomposed conv, linear) in one phase.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub node: String,
    pub kind: String,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Bases of a decomposed conv.
    pub bases: Option<usize>,
    /// Entries of the coefficients (decomposed conv) or weight (conv, linear).
    pub weights: usize,
    pub nonzero: usize,
    pub sparsity: f64,
    pub params_paper: u64,
    pub macs_paper: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseRecord {
    /// baseline, decompose, retrain, prune, finetune or shrink.
    pub phase: String,
    /// Top-1 accuracy as a fraction in [0, 1], when the caller measured it.
    pub top1: Option<f32>,
    pub cost: CostRecord,
    /// Zeros / entries over all decomposed layers' coefficients (`None` without such layers).
    pub coefficient_sparsity: Option<f64>,
    /// Zeros / entries over every conv/linear weight and coefficient tensor.
    pub weight_sparsity: f64,
    pub layers: Vec<LayerRecord>,
}

impl PhaseRecord {
    /// Measures a model after a phase.
    pub fn measure(phase: &str, model: &Model, top1: Option<f32>) -> Result<Self> {
        let cost = model_cost(model)?;
        let mut layers = Vec::new();
        let (mut cz, mut ct, mut wz, mut wt) = (0usize, 0usize, 0usize, 0usize);
        for (node, lc) in model.nodes.iter().zip(&cost.layers) {
            let (i, o, b, p) = match &node.op {
                Op::Conv2d(c) => (c.in_channels, c.out_channels, None, "weight"),
                Op::DecomposedConv2d(c) => (c.conv.in_channels, c.conv.out_channels, Some(c.num_bases), "coefficients"),
                Op::Linear {
                    in_features, out_features, ..
                } => (*in_features, *out_features, None, "weight"),
                _ => continue,
            };
            let t = node.param(p)?;
            let (n, nnz) = (t.numel(), t.nnz());
            if b.is_some() {
                cz += n - nnz;
                ct += n;
            }
            wz += n - nnz;
            wt += n;
            layers.push(LayerRecord {
                node: node.name.clone(),
                kind: node.op.kind().into(),
                in_channels: i,
                out_channels: o,
                bases: b,
                weights: n,
                nonzero: nnz,
                sparsity: ratio(n - nnz, n),
                params_paper: lc.params_paper,
                macs_paper: lc.macs_paper,
            });
        }
        let t = cost.totals;
        Ok(Self {
            phase: phase.into(),
            top1,
            cost: CostRecord {
                params_paper: t.params_paper,
                params_all: t.params_all,
                macs_paper: t.macs_paper,
                macs_all: t.macs_all,
            },
            coefficient_sparsity: (ct > 0).then(|| ratio(cz, ct)),
            weight_sparsity: ratio(wz, wt),
            layers,
        })
    }
}

/// The whole run: one record per phase plus the passes' own reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CompressionReport {
    pub model: String,
    /// "penni", "tucker" or "auto" (absent in reports written before there was a choice).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    pub counting_paper: String,
    pub counting_all: String,
    pub phases: Vec<PhaseRecord>,
    pub decompose: Option<DecomposeReport>,
    pub prune: Option<PruneReport>,
    pub shrink: Option<ShrinkReport>,
    /// Things a reader should know (e.g. a trainer that did not keep pruned entries at zero).
    #[serde(default)]
    pub notes: Vec<String>,
    /// Test-set top-1 of the baseline and the final model, measured once after the last phase
    /// (the phases' `top1` are validation figures).
    #[serde(default)]
    pub test: Option<TestResult>,
    /// ADMM's constraint gap per round (Tucker method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admm: Option<AdmmReport>,
    /// The Tucker projection: ranks and reconstruction error per layer (Tucker method).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tucker: Option<TuckerReport>,
    /// The budget mode's choices and predictions, when a budget was set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetReport>,
}

/// The test set's verdict on a run, measured once at its end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestResult {
    pub baseline_top1: f32,
    pub final_top1: f32,
}

/// Where `CompressionReport::write` put its files.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportFiles {
    pub table: PathBuf,
    pub json: PathBuf,
    pub svg: PathBuf,
}

/// 1234567 -> "1.23M": tables are read by people.
pub fn human(n: u64) -> String {
    let f = n as f64;
    if f >= 1e9 {
        format!("{:.2}G", f / 1e9)
    } else if f >= 1e6 {
        format!("{:.2}M", f / 1e6)
    } else if f >= 1e3 {
        format!("{:.1}K", f / 1e3)
    } else {
        n.to_string()
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// Left-aligned first column, right-aligned others, widths from the content.
fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 0 {
                let _ = write!(s, "{:<width$}", c, width = w[i]);
            } else {
                let _ = write!(s, "  {:>width$}", c, width = w[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out += &line(w.iter().map(|n| "-".repeat(*n)).collect());
    for r in rows {
        out += &line(r.clone());
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl CompressionReport {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.into(),
            counting_paper: COUNTING_PAPER.into(),
            counting_all: COUNTING_ALL.into(),
            ..Default::default()
        }
    }

    /// The record of a phase, if present.
    pub fn phase(&self, name: &str) -> Option<&PhaseRecord> {
        self.phases.iter().find(|p| p.phase == name)
    }

    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| CompressError::Invalid(format!("report does not serialise: {e}")))
    }

    /// Terminal table: phases, then layers (first and last phase side by side), then channel groups.
    pub fn to_table(&self) -> String {
        let mut s = format!(
            "{} compression report: {}\n  params/MACs {}\n  params/MACs {}\n\n",
            match self.method.as_str() {
                "tucker" => "Tucker-2 (ADMM)",
                "auto" => "Auto (PENNI, Tucker-2 or dense per layer)",
                _ => "PENNI",
            },
            self.model,
            self.counting_paper,
            self.counting_all
        );
        let rows: Vec<Vec<String>> = self
            .phases
            .iter()
            .map(|p| {
                vec![
                    p.phase.clone(),
                    p.top1.map_or("-".into(), |a| format!("{:.2}%", a * 100.0)),
                    human(p.cost.params_paper),
                    human(p.cost.params_all),
                    human(p.cost.macs_paper),
                    human(p.cost.macs_all),
                    p.coefficient_sparsity.map_or("-".into(), pct),
                    pct(p.weight_sparsity),
                ]
            })
            .collect();
        s += &render(
            &[
                "phase",
                "top-1 (val)",
                "params (paper)",
                "params (all)",
                "MACs (paper)",
                "MACs (all)",
                "coef. sparsity",
                "weight sparsity",
            ],
            &rows,
        );
        if let (Some(first), Some(last)) = (self.phases.first(), self.phases.last()) {
            s += &format!("\nlayers ({} -> {}):\n", first.phase, last.phase);
            let first_bases = |node: &str| {
                self.phases
                    .iter()
                    .find_map(|p| p.layers.iter().find(|l| l.node == node).and_then(|l| l.bases))
            };
            let err = |node: &str| {
                self.decompose
                    .as_ref()
                    .and_then(|d| d.layers.iter().find(|l| l.node == node))
                    .map(|l| format!("{:.4}", l.relative_error))
            };
            let rows: Vec<Vec<String>> = first
                .layers
                .iter()
                .map(|l0| {
                    let l1 = last.layers.iter().find(|l| l.node == l0.node);
                    let arrow = |a: usize, b: Option<usize>| match b {
                        Some(b) if b != a => format!("{a} -> {b}"),
                        Some(b) => b.to_string(),
                        None => format!("{a} -> ?"),
                    };
                    vec![
                        l0.node.clone(),
                        l1.map_or(l0.kind.clone(), |l| l.kind.clone()),
                        arrow(l0.in_channels, l1.map(|l| l.in_channels)),
                        arrow(l0.out_channels, l1.map(|l| l.out_channels)),
                        match (first_bases(&l0.node), l1.and_then(|l| l.bases)) {
                            (Some(a), Some(b)) if a != b => format!("{a} -> {b}"),
                            (_, Some(b)) => b.to_string(),
                            _ => "-".into(),
                        },
                        err(&l0.node).unwrap_or_else(|| "-".into()),
                        l1.map_or("-".into(), |l| format!("{}/{}", l.nonzero, l.weights)),
                        l1.map_or("-".into(), |l| pct(l.sparsity)),
                    ]
                })
                .collect();
            s += &render(
                &["layer", "kind", "in", "out", "bases", "decomp. error", "non-zero", "sparsity"],
                &rows,
            );
        }
        if let Some(d) = self.decompose.as_ref().filter(|d| !d.kept_dense.is_empty()) {
            s += &format!(
                "\nkept dense (the basis stage alone would cost as much as the conv: d * groups >= outputs): {}\n",
                d.kept_dense.join(", ")
            );
        }
        if let Some(p) = &self.prune {
            let zeroed: usize = p.layers.iter().map(|l| l.zeroed_input_channels).sum();
            if zeroed > 0 {
                s += &format!(
                    "\ngroup pruning (beyond the paper: group lasso on each input channel's coefficients): {zeroed} input channels zeroed whole\n"
                );
            }
        }
        if let Some(sh) = &self.shrink {
            s += &format!(
                "\nshrink: {} channels removed ({} by folding a constant into the next layer's bias), {} bases removed, {} passes\n",
                sh.removed_channels, sh.folded_channels, sh.removed_bases, sh.iterations
            );
            let rows: Vec<Vec<String>> = sh
                .groups
                .iter()
                .filter(|g| g.tensors.len() > 1 || g.channels_after != g.channels_before || g.constant_kept > 0)
                .map(|g| {
                    vec![
                        g.tensors.first().cloned().unwrap_or_default(),
                        g.tensors.len().to_string(),
                        format!("{} -> {}", g.channels_before, g.channels_after),
                        g.constant_kept.to_string(),
                        g.pinned.first().cloned().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            s += &render(
                &["channel group (first tensor)", "tensors", "channels", "constant kept", "pinned"],
                &rows,
            );
        }
        if let Some(b) = &self.budget {
            s += &self.budget_table(b);
        }
        if let Some(a) = &self.admm {
            s += &format!(
                "\nADMM toward Tucker form: constraint gap ||W - Z|| / ||W|| {:.4} before training",
                a.initial_gap
            );
            for r in &a.rounds {
                s += &format!(", {:.4} after epoch {} (rho {:.4})", r.gap, r.epochs_done, r.rho);
            }
            s += "\n";
        }
        if let Some(t) = &self.tucker {
            let rows: Vec<Vec<String>> = t
                .layers
                .iter()
                .map(|l| {
                    vec![
                        l.node.clone(),
                        format!("{} -> {}", l.in_channels, l.out_channels),
                        format!("{} -> {}", l.ranks.r_in, l.ranks.r_out),
                        format!("{:.4}", l.relative_error),
                    ]
                })
                .collect();
            s += "\nTucker-2 projection (1x1 C -> R_in, core R_in -> R_out, 1x1 R_out -> N):\n";
            s += &render(&["layer", "channels", "ranks", "projection error"], &rows);
            for (name, why) in &t.kept_dense {
                s += &format!("kept dense: {name}: {why}\n");
            }
        }
        if let Some(t) = &self.test {
            s += &format!(
                "\ntest top-1 (measured once, after the last phase): baseline {:.2}%, final {:.2}% ({:+.2} points)\n",
                t.baseline_top1 * 100.0,
                t.final_top1 * 100.0,
                (t.final_top1 - t.baseline_top1) * 100.0
            );
        }
        for n in &self.notes {
            s += &format!("\nnote: {n}");
        }
        if !self.notes.is_empty() {
            s += "\n";
        }
        s
    }

    /// The budget mode: the target, per stage the per-layer choices, and predicted against
    /// measured (in MACs from the phase records, in any unit the final model's measured cost;
    /// validation top-1 from the prune phase).
    fn budget_table(&self, b: &BudgetReport) -> String {
        let in_macs = b.unit.starts_with("MACs");
        let amount = |v: f64| if in_macs { human(v.round() as u64) } else { format!("{v:.3}") };
        let measured = |st: &BudgetStage| st.measured_cost.map_or("-".into(), amount);
        let top1 = |phase: &str| self.phase(phase).and_then(|p| p.top1);
        let target = match b.target {
            Some(Target::MacsFraction(f)) => format!("{:.1}% of the baseline's {}", f * 100.0, amount(b.baseline_cost)),
            Some(Target::LatencyMs { ms, batch, threads }) => format!(
                "{ms} ms per batch of {batch} on {} (baseline {})",
                if threads == 0 {
                    "all cores".to_string()
                } else {
                    format!("{threads} threads")
                },
                amount(b.baseline_cost)
            ),
            None => format!("{} (baseline {})", amount(b.budget), amount(b.baseline_cost)),
        };
        let mut s = format!("\nbudget: {} <= {target} = {}\n", b.unit, amount(b.budget));
        let stage_rows = |st: &BudgetStage| -> Vec<Vec<String>> {
            st.layers
                .iter()
                .map(|l| {
                    let c = l.choice();
                    vec![
                        l.node.clone(),
                        c.form.map_or_else(|| format!("{} = {}", st.parameter, c.value), |f| f.to_string()),
                        amount(c.cost),
                        format!("{:.2}%", c.top1 * 100.0),
                        c.loss.map_or("-".into(), |v| format!("{v:.4}")),
                        l.candidates.len().to_string(),
                    ]
                })
                .collect()
        };
        let cost_head = format!("{} (pred.)", if in_macs { "MACs" } else { "ms" });
        let header = ["layer", "choice", cost_head.as_str(), "top-1 alone", "loss alone", "candidates"];
        let reference = |st: &BudgetStage| {
            format!(
                "{:.2}%{}",
                st.reference_top1 * 100.0,
                st.reference_loss.map_or(String::new(), |l| format!(", loss {l:.4}"))
            )
        };
        let within = |met: bool| {
            if met {
                "within the budget"
            } else {
                "over the budget: the candidates cannot go lower"
            }
        };
        if let Some(st) = &b.bases {
            s += &format!(
                "{}, chosen before retraining (PENNI's combination stage costed at {:.0}% of coefficients kept; validation top-1 and loss of the model with only that layer decomposed, before retraining; reference {}):\n",
                if st.parameter == "form" {
                    "forms (PENNI, Tucker-2 or dense)"
                } else {
                    "bases"
                },
                b.coefficient_density * 100.0,
                reference(st)
            );
            s += &render(&header, &stage_rows(st));
            s += &format!(
                "  {}: predicted {} ({}); measured after decomposition {} (coefficients still dense)\n",
                b.unit,
                amount(st.predicted_cost),
                within(st.met),
                measured(st),
            );
        }
        if let Some(st) = &b.prune {
            s += &format!(
                "pruning thresholds, chosen after retraining (s in standard deviations, 0 = not pruned; validation top-1 and loss of the model with only that layer pruned; reference {}):\n",
                reference(st)
            );
            s += &render(&header, &stage_rows(st));
            let measured_drop = top1("prune").map(|a| (st.reference_top1 - a) * 100.0);
            s += &format!(
                "  {}: predicted {} ({}), measured after pruning {}, after shrinking {}\n  validation top-1 lost by pruning: predicted {:.2} points (sum of the layers' own), measured {}{}\n",
                b.unit,
                amount(st.predicted_cost),
                within(st.met),
                measured(st),
                b.measured_final.map_or("-".into(), amount),
                st.predicted_drop * 100.0,
                measured_drop.map_or("-".into(), |d| format!("{d:.2} points")),
                st.predicted_loss_rise
                    .map_or(String::new(), |r| format!("; validation loss predicted to rise by {r:.4}")),
            );
        }
        s
    }

    /// Two bar charts: per phase (params and MACs, paper counting, as % of the first phase, and
    /// top-1), and per layer (output channels originally and after the last phase).
    pub fn to_svg(&self) -> String {
        let (w, h1, h2) = (960.0f64, 340.0f64, 360.0f64);
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" viewBox=\"0 0 {w} {}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
            h1 + h2,
            h1 + h2
        );
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"22\" font-size=\"15\" text-anchor=\"middle\">{}: PENNI phases (params and MACs counted paper-style, % of {})</text>",
            w / 2.0,
            xml_escape(&self.model),
            xml_escape(self.phases.first().map_or("first phase", |p| p.phase.as_str()))
        );
        // panel 1
        let (x0, y0, pw, ph) = (60.0, 50.0, w - 90.0, h1 - 110.0);
        axis(&mut s, x0, y0, pw, ph, 100.0, "%");
        let colors = ["#4e79a7", "#f28e2b", "#59a14f"];
        let names = ["params (paper)", "MACs (paper)", "top-1"];
        let base = self.phases.first().map(|p| p.cost.clone()).unwrap_or_default();
        let n = self.phases.len().max(1) as f64;
        let slot = pw / n;
        let bw = (slot * 0.8 / 3.0).min(40.0);
        for (i, p) in self.phases.iter().enumerate() {
            let vals = [
                Some(100.0 * ratio_u(p.cost.params_paper, base.params_paper)),
                Some(100.0 * ratio_u(p.cost.macs_paper, base.macs_paper)),
                p.top1.map(|a| a as f64 * 100.0),
            ];
            let cx = x0 + slot * (i as f64 + 0.5);
            for (j, v) in vals.iter().enumerate() {
                let Some(v) = v else { continue };
                let bh = (v.clamp(0.0, 110.0) / 100.0) * ph;
                let bx = cx - 1.5 * bw + j as f64 * bw;
                let _ = writeln!(
                    s,
                    "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{}\"><title>{} {}: {v:.2}%</title></rect>",
                    y0 + ph - bh,
                    bw - 2.0,
                    colors[j],
                    xml_escape(&p.phase),
                    names[j]
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\" text-anchor=\"middle\">{v:.1}</text>",
                    bx + bw / 2.0 - 1.0,
                    y0 + ph - bh - 3.0
                );
            }
            let _ = writeln!(
                s,
                "<text x=\"{cx:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y0 + ph + 16.0,
                xml_escape(&p.phase)
            );
        }
        for (j, name) in names.iter().enumerate() {
            let lx = x0 + j as f64 * 150.0;
            let ly = h1 - 30.0;
            let _ = writeln!(
                s,
                "<rect x=\"{lx}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/><text x=\"{}\" y=\"{}\">{name}</text>",
                ly - 10.0,
                colors[j],
                lx + 16.0,
                ly
            );
        }
        // panel 2
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" font-size=\"15\" text-anchor=\"middle\">output channels per layer: {} (grey) and {} (blue)</text>",
            w / 2.0,
            h1 + 10.0,
            xml_escape(self.phases.first().map_or("", |p| p.phase.as_str())),
            xml_escape(self.phases.last().map_or("", |p| p.phase.as_str()))
        );
        if let (Some(first), Some(last)) = (self.phases.first(), self.phases.last()) {
            let (x0, y0, pw, ph) = (60.0, h1 + 30.0, w - 90.0, h2 - 130.0);
            let max = first.layers.iter().map(|l| l.out_channels).max().unwrap_or(1).max(1) as f64;
            axis(&mut s, x0, y0, pw, ph, max, "");
            let slot = pw / first.layers.len().max(1) as f64;
            let bw = (slot * 0.8).min(30.0);
            for (i, l0) in first.layers.iter().enumerate() {
                let cx = x0 + slot * (i as f64 + 0.5);
                let after = last
                    .layers
                    .iter()
                    .find(|l| l.node == l0.node)
                    .map_or(l0.out_channels, |l| l.out_channels);
                for (v, color) in [(l0.out_channels, "#cccccc"), (after, "#4e79a7")] {
                    let bh = v as f64 / max * ph;
                    let _ = writeln!(
                        s,
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{bw:.1}\" height=\"{bh:.1}\" fill=\"{color}\"><title>{}: {v}</title></rect>",
                        cx - bw / 2.0,
                        y0 + ph - bh,
                        xml_escape(&l0.node)
                    );
                }
                let (tx, ty) = (cx, y0 + ph + 8.0);
                let _ = writeln!(
                    s,
                    "<text x=\"{tx:.1}\" y=\"{ty:.1}\" font-size=\"9\" text-anchor=\"end\" transform=\"rotate(-60 {tx:.1} {ty:.1})\">{}</text>",
                    xml_escape(&l0.node)
                );
            }
        }
        s += "</svg>\n";
        s
    }

    /// Writes `report.txt`, `report.json` and `report.svg` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<ReportFiles> {
        std::fs::create_dir_all(dir).map_err(|source| CompressError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let files = ReportFiles {
            table: dir.join("report.txt"),
            json: dir.join("report.json"),
            svg: dir.join("report.svg"),
        };
        write_atomic(&files.table, self.to_table().as_bytes())?;
        write_atomic(&files.json, self.to_json()?.as_bytes())?;
        write_atomic(&files.svg, self.to_svg().as_bytes())?;
        Ok(files)
    }
}

fn ratio_u(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// Y axis with four grid lines from 0 to `max`.
fn axis(s: &mut String, x0: f64, y0: f64, pw: f64, ph: f64, max: f64, unit: &str) {
    for i in 0..=4 {
        let y = y0 + ph - ph * i as f64 / 4.0;
        let v = max * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<line x1=\"{x0}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#e0e0e0\"/>",
            x0 + pw
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}{unit}</text>",
            x0 - 6.0,
            y + 4.0,
            if max >= 10.0 { format!("{v:.0}") } else { format!("{v:.2}") }
        );
    }
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{:.1}\" stroke=\"black\"/>",
        y0 + ph
    );
    let _ = writeln!(
        s,
        "<line x1=\"{x0}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
        y0 + ph,
        x0 + pw,
        y0 + ph
    );
}
