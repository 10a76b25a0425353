//! Reference CNNs built as IR graphs with seeded initialisation: the CIFAR variants of VGG-16,
//! ResNet-18 (as used by PENNI) and ResNet-20/56.

use std::collections::{BTreeMap, HashMap};

use crate::error::{ModelError, Result};
use crate::graph::{Conv2d, Input, Model, Node, Op, Pool2d, Shape, node_output_shape};
use crate::tensor::Tensor;

/// Options every zoo model takes.
#[derive(Clone, Debug)]
pub struct ZooOptions {
    pub in_channels: usize,
    pub height: usize,
    pub width: usize,
    pub num_classes: usize,
    /// Scales every layer's channel count (rounded, at least 1).
    pub width_multiplier: f32,
    pub seed: u64,
}

impl Default for ZooOptions {
    fn default() -> Self {
        Self {
            in_channels: 3,
            height: 32,
            width: 32,
            num_classes: 10,
            width_multiplier: 1.0,
            seed: 0,
        }
    }
}

pub const ZOO_NAMES: &[&str] = &["vgg16", "vgg16avg", "resnet18", "resnet20", "resnet56"];

pub fn build(name: &str, opts: &ZooOptions) -> Result<Model> {
    match name {
        "vgg16" => vgg16(opts),
        "vgg16avg" => vgg16_with(opts, "vgg16avg", true),
        "resnet18" => resnet18(opts),
        "resnet20" => cifar_resnet(opts, 3, "resnet20"),
        "resnet56" => cifar_resnet(opts, 9, "resnet56"),
        other => Err(ModelError::Graph(format!(
            "unknown zoo model '{other}'; choose one of {}",
            ZOO_NAMES.join(", ")
        ))),
    }
}

/// Deterministic random numbers for weight initialisation (SplitMix64 + Box-Muller), so a model
/// built with a seed is the same on every machine and every version.
pub struct InitRng(u64);

impl InitRng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// Builds a graph node by node, tracking shapes so that layer sizes follow from their inputs.
/// The first error is kept and returned by `finish`, which keeps model definitions readable.
pub struct GraphBuilder {
    model: Model,
    shapes: HashMap<String, Shape>,
    rng: InitRng,
    error: Option<ModelError>,
}

impl GraphBuilder {
    pub fn new(name: &str, input: Input, seed: u64) -> Self {
        let mut shapes = HashMap::new();
        shapes.insert(
            input.name.clone(),
            Shape::Map {
                c: input.channels,
                h: input.height,
                w: input.width,
            },
        );
        let model = Model {
            name: name.into(),
            input,
            nodes: vec![],
            output: String::new(),
        };
        Self {
            model,
            shapes,
            rng: InitRng::new(seed),
            error: None,
        }
    }

    pub fn input(&self) -> String {
        self.model.input.name.clone()
    }

    pub fn shape(&self, x: &str) -> Option<Shape> {
        self.shapes.get(x).copied()
    }

    fn channels(&self, x: &str) -> usize {
        match self.shapes.get(x) {
            Some(Shape::Map { c, .. }) => *c,
            Some(Shape::Vector(n)) => *n,
            None => 0,
        }
    }

    /// Adds a node whose output tensor is named after the node.
    pub fn push(&mut self, name: &str, op: Op, inputs: &[&str], params: BTreeMap<String, Tensor>) -> String {
        let node = Node {
            name: name.into(),
            op,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            output: name.into(),
            params,
        };
        if self.error.is_none() {
            let ins: Option<Vec<Shape>> = inputs.iter().map(|i| self.shapes.get(*i).copied()).collect();
            match ins
                .ok_or_else(|| ModelError::Graph(format!("node '{name}' reads an unknown tensor")))
                .and_then(|ins| node_output_shape(&node, &ins))
            {
                Ok(s) => {
                    self.shapes.insert(name.into(), s);
                }
                Err(e) => self.error = Some(e),
            }
        }
        self.model.nodes.push(node);
        name.into()
    }

    fn normal(&mut self, shape: Vec<usize>, std: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: (0..n).map(|_| self.rng.normal() * std).collect(),
        }
    }

    fn uniform(&mut self, shape: Vec<usize>, bound: f32) -> Tensor {
        let n = shape.iter().product();
        Tensor {
            shape,
            data: (0..n).map(|_| (self.rng.uniform() * 2.0 - 1.0) * bound).collect(),
        }
    }

    /// Square conv with symmetric padding, Kaiming-normal (fan-out) initialised as torchvision does.
    #[allow(clippy::too_many_arguments)]
    pub fn conv(&mut self, name: &str, x: &str, out: usize, k: usize, stride: usize, pad: usize, bias: bool) -> String {
        let cin = self.channels(x);
        let spec = Conv2d {
            in_channels: cin,
            out_channels: out,
            kernel: [k, k],
            stride: [stride, stride],
            padding: [pad; 4],
            dilation: [1, 1],
            groups: 1,
            bias,
        };
        let mut params = BTreeMap::new();
        params.insert(
            "weight".into(),
            self.normal(vec![out, cin, k, k], (2.0 / (out * k * k) as f32).sqrt()),
        );
        if bias {
            params.insert("bias".into(), Tensor::zeros(vec![out]));
        }
        self.push(name, Op::Conv2d(spec), &[x], params)
    }

    pub fn batch_norm(&mut self, name: &str, x: &str) -> String {
        let c = self.channels(x);
        let params = BTreeMap::from([
            ("weight".into(), Tensor::full(vec![c], 1.0)),
            ("bias".into(), Tensor::zeros(vec![c])),
            ("running_mean".into(), Tensor::zeros(vec![c])),
            ("running_var".into(), Tensor::full(vec![c], 1.0)),
        ]);
        self.push(name, Op::BatchNorm2d { channels: c, eps: 1e-5 }, &[x], params)
    }

    pub fn relu(&mut self, name: &str, x: &str) -> String {
        self.push(name, Op::Relu, &[x], BTreeMap::new())
    }

    pub fn max_pool(&mut self, name: &str, x: &str, k: usize, stride: usize) -> String {
        self.push(name, Op::MaxPool2d(square_pool(k, stride)), &[x], BTreeMap::new())
    }

    pub fn avg_pool(&mut self, name: &str, x: &str, k: usize, stride: usize) -> String {
        self.push(name, Op::AvgPool2d(square_pool(k, stride)), &[x], BTreeMap::new())
    }

    pub fn global_avg_pool(&mut self, name: &str, x: &str) -> String {
        self.push(name, Op::GlobalAvgPool, &[x], BTreeMap::new())
    }

    pub fn flatten(&mut self, name: &str, x: &str) -> String {
        self.push(name, Op::Flatten, &[x], BTreeMap::new())
    }

    pub fn activation(&mut self, name: &str, x: &str, a: crate::graph::Activation) -> String {
        self.push(name, Op::Activation(a), &[x], BTreeMap::new())
    }

    pub fn mul(&mut self, name: &str, a: &str, b: &str) -> String {
        self.push(name, Op::Mul, &[a, b], BTreeMap::new())
    }

    pub fn concat(&mut self, name: &str, inputs: &[&str]) -> String {
        self.push(name, Op::Concat, inputs, BTreeMap::new())
    }

    pub fn softmax(&mut self, name: &str, x: &str, log: bool) -> String {
        self.push(name, Op::Softmax { log }, &[x], BTreeMap::new())
    }

    pub fn add(&mut self, name: &str, inputs: &[&str]) -> String {
        self.push(name, Op::Add, inputs, BTreeMap::new())
    }

    /// Linear layer with PyTorch's default uniform(-1/sqrt(in), 1/sqrt(in)) initialisation.
    pub fn linear(&mut self, name: &str, x: &str, out: usize) -> String {
        let inf = self.shape(x).map_or(0, |s| s.numel());
        let bound = 1.0 / (inf.max(1) as f32).sqrt();
        let params = BTreeMap::from([
            ("weight".into(), self.uniform(vec![out, inf], bound)),
            ("bias".into(), self.uniform(vec![out], bound)),
        ]);
        self.push(
            name,
            Op::Linear {
                in_features: inf,
                out_features: out,
                bias: true,
            },
            &[x],
            params,
        )
    }

    /// conv -> batchnorm -> (relu), the building block of every zoo model.
    pub fn conv_bn(&mut self, prefix: &str, x: &str, out: usize, k: usize, stride: usize, relu: bool) -> String {
        let c = self.conv(&format!("{prefix}conv"), x, out, k, stride, k / 2, false);
        let b = self.batch_norm(&format!("{prefix}bn"), &c);
        if relu { self.relu(&format!("{prefix}relu"), &b) } else { b }
    }

    pub fn finish(mut self, output: &str) -> Result<Model> {
        if let Some(e) = self.error {
            return Err(e);
        }
        self.model.output = output.into();
        self.model.validate()?;
        Ok(self.model)
    }
}

fn scaled(c: usize, m: f32) -> usize {
    ((c as f32 * m).round() as usize).max(1)
}

/// A k x k pool window at `stride`, unpadded: the zoo's pools.
fn square_pool(k: usize, stride: usize) -> Pool2d {
    Pool2d {
        kernel: [k, k],
        stride: [stride, stride],
        padding: [0; 4],
        ceil_mode: false,
        count_include_pad: false,
    }
}

fn check(opts: &ZooOptions) -> Result<Input> {
    if !(opts.width_multiplier.is_finite() && opts.width_multiplier > 0.0) {
        return Err(ModelError::Graph(format!(
            "width multiplier must be positive, got {}",
            opts.width_multiplier
        )));
    }
    if opts.num_classes == 0 || opts.in_channels == 0 {
        return Err(ModelError::Graph("number of classes and input channels must be positive".into()));
    }
    Ok(Input {
        name: "input".into(),
        channels: opts.in_channels,
        height: opts.height,
        width: opts.width,
    })
}

/// VGG-16 for 32x32 images: 13 conv+BN+ReLU, 5 max-pools, one linear classifier.
pub fn vgg16(opts: &ZooOptions) -> Result<Model> {
    vgg16_with(opts, "vgg16", false)
}

/// VGG-16 with max pools, or with 2x2 average pools (`vgg16avg`, the variant of Gatys et al.'s
/// style transfer; conv -> BN -> ReLU -> average pool is what MLCNN's reordering speeds up).
fn vgg16_with(opts: &ZooOptions, name: &str, average: bool) -> Result<Model> {
    const CFG: [usize; 18] = [64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0];
    let mut b = GraphBuilder::new(name, check(opts)?, opts.seed);
    let mut x = b.input();
    let (mut conv_i, mut pool_i) = (0, 0);
    for c in CFG {
        if c == 0 {
            pool_i += 1;
            x = if average {
                b.avg_pool(&format!("pool{pool_i}"), &x, 2, 2)
            } else {
                b.max_pool(&format!("pool{pool_i}"), &x, 2, 2)
            };
        } else {
            conv_i += 1;
            x = b.conv_bn(&format!("features.{conv_i}."), &x, scaled(c, opts.width_multiplier), 3, 1, true);
        }
    }
    let f = b.flatten("flatten", &x);
    let y = b.linear("classifier", &f, opts.num_classes);
    b.finish(&y)
}

/// A basic residual block; the shortcut is a 1x1 conv + BN when the shape changes.
fn basic_block(b: &mut GraphBuilder, prefix: &str, x: &str, out: usize, stride: usize) -> String {
    let cin = b.channels(x);
    let h = b.conv_bn(&format!("{prefix}.1."), x, out, 3, stride, true);
    let h = b.conv_bn(&format!("{prefix}.2."), &h, out, 3, 1, false);
    let shortcut = if stride != 1 || cin != out {
        b.conv_bn(&format!("{prefix}.shortcut."), x, out, 1, stride, false)
    } else {
        x.to_string()
    };
    let s = b.add(&format!("{prefix}.add"), &[&h, &shortcut]);
    b.relu(&format!("{prefix}.relu"), &s)
}

/// ResNet-18 as used by PENNI on CIFAR: 3x3 stem with 64 channels, no stem pooling, four stages
/// of two basic blocks (64/128/256/512), global average pooling, linear classifier.
pub fn resnet18(opts: &ZooOptions) -> Result<Model> {
    let m = opts.width_multiplier;
    let mut b = GraphBuilder::new("resnet18", check(opts)?, opts.seed);
    let input = b.input();
    let mut x = b.conv_bn("stem.", &input, scaled(64, m), 3, 1, true);
    for (stage, width) in [64, 128, 256, 512].into_iter().enumerate() {
        for block in 0..2 {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = basic_block(&mut b, &format!("layer{}.{block}", stage + 1), &x, scaled(width, m), stride);
        }
    }
    let p = b.global_avg_pool("pool", &x);
    let f = b.flatten("flatten", &p);
    let y = b.linear("fc", &f, opts.num_classes);
    b.finish(&y)
}

/// The CIFAR ResNets of He et al. (6n+2 layers: 16/32/64 channels); n=3 is ResNet-20, n=9 ResNet-56.
pub fn cifar_resnet(opts: &ZooOptions, n: usize, name: &str) -> Result<Model> {
    let m = opts.width_multiplier;
    let mut b = GraphBuilder::new(name, check(opts)?, opts.seed);
    let input = b.input();
    let mut x = b.conv_bn("stem.", &input, scaled(16, m), 3, 1, true);
    for (stage, width) in [16, 32, 64].into_iter().enumerate() {
        for block in 0..n {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            x = basic_block(&mut b, &format!("layer{}.{block}", stage + 1), &x, scaled(width, m), stride);
        }
    }
    let p = b.global_avg_pool("pool", &x);
    let f = b.flatten("flatten", &p);
    let y = b.linear("fc", &f, opts.num_classes);
    b.finish(&y)
}
