//! The `.penni` file: a safetensors file whose metadata holds the graph as JSON, a format
//! version and a checksum. Each tensor is stored in the smallest of these forms that gives every
//! value back exactly, so a compressed model is small on disk too:
//! - positions: all of them, or for a mostly-zero (pruned) tensor those of the non-zeros, as
//!   `name#gaps{k}` (Rice-coded gaps, see [`crate::gaps`]), `name#mask` (one bit per value) or
//!   `name#indices` (u32 flat positions);
//! - values: f32 (`name`, or `name#values` for the non-zeros), or for a quantized tensor (values
//!   on a symmetric integer grid per output channel, see [`crate::grid`]) `name#q{bits}` (the
//!   integers, packed) + `name#qscales` (one f32 scale per group).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::graph::{Input, Model, Node, Op};
use crate::tensor::{Tensor, checked_numel};
use crate::{gaps, grid};

/// 3: the `#gaps{k}` form; 2: the `#mask` and `#q{bits}` forms (older files read as before).
pub const FORMAT_VERSION: u32 = 3;
const SPARSE_INDICES: &str = "#indices";
const SPARSE_VALUES: &str = "#values";
const SPARSE_MASK: &str = "#mask";
const SPARSE_GAPS: &str = "#gaps";
const QUANT_SCALES: &str = "#qscales";
const EXTRA_PREFIX: &str = "extra/";

/// A model plus whatever a tool wants to keep beside it (a training checkpoint keeps optimizer
/// state and progress here). Extras ride in the same file so a checkpoint is one atomic write.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    pub metadata: BTreeMap<String, String>,
    pub tensors: BTreeMap<String, Tensor>,
}

#[derive(Serialize, Deserialize)]
struct GraphJson {
    name: String,
    input: Input,
    nodes: Vec<NodeJson>,
    output: String,
}

#[derive(Serialize, Deserialize)]
struct NodeJson {
    name: String,
    op: Op,
    inputs: Vec<String>,
    output: String,
}

fn file_err(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so a
/// crash never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = path.file_name().ok_or_else(|| file_err(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Values stored as f32 or, when they lie on a grid and that is smaller, packed integers.
fn encode_values(
    name: &str,
    suffix: &str,
    values: &[f32],
    groups: &[usize],
    group_len: impl Fn(usize) -> usize,
    pos: &dyn Fn(usize) -> usize,
) -> Vec<Entry> {
    let f32_form = vec![(format!("{name}{suffix}"), Dtype::F32, vec![values.len()], f32_bytes(values))];
    let mut best = f32_form;
    let mut best_len = 4 * values.len();
    for &g in groups {
        let len = group_len(g);
        if g == 0 || len == 0 {
            continue;
        }
        if let Some(grid) = grid::detect(values, g, |i| pos(i) / len) {
            let bytes = grid::packed_len(values.len(), grid.bits).unwrap_or(usize::MAX);
            let size = bytes.saturating_add(4 * g);
            if size < best_len {
                best_len = size;
                best = vec![
                    (
                        format!("{name}#q{}", grid.bits),
                        Dtype::U8,
                        vec![bytes],
                        grid::pack(&grid.codes, grid.bits),
                    ),
                    (format!("{name}{QUANT_SCALES}"), Dtype::F32, vec![g], f32_bytes(&grid.scales)),
                ];
            }
        }
    }
    best
}

fn stored_len(entries: &[Entry]) -> usize {
    entries.iter().map(|e| e.3.len()).sum()
}

/// Encodes one tensor in its smallest exact form (module docs); `groups`: the group counts
/// (output channels, bases) a quantizer may have used for it; `version`: the file format's.
fn encode(name: &str, t: &Tensor, groups: &[usize], version: u32, out: &mut Vec<Entry>) {
    let numel = t.numel();
    let group_len = |g: usize| numel.div_ceil(g.max(1));
    let dense = {
        let mut v = encode_values(name, "", &t.data, groups, group_len, &|i| i);
        if v.len() == 1 {
            // the legacy dense form keeps the tensor's shape
            v[0].2 = t.shape.clone();
        }
        v
    };
    let mut best = dense;
    let nnz = t.nnz();
    if nnz * 2 < numel && numel <= u32::MAX as usize {
        let (idx, vals): (Vec<u32>, Vec<f32>) = t
            .data
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, v)| (i as u32, *v))
            .unzip();
        let values = encode_values(name, SPARSE_VALUES, &vals, groups, group_len, &|j| idx[j] as usize);
        let positions = if 4 * nnz <= numel.div_ceil(8) {
            (
                format!("{name}{SPARSE_INDICES}"),
                Dtype::U32,
                vec![nnz],
                idx.iter().flat_map(|v| v.to_le_bytes()).collect(),
            )
        } else {
            let mut mask = vec![0u8; numel.div_ceil(8)];
            for &i in &idx {
                mask[i as usize / 8] |= 1 << (i % 8);
            }
            (format!("{name}{SPARSE_MASK}"), Dtype::U8, vec![mask.len()], mask)
        };
        let positions = if version >= 3 {
            let pos: Vec<usize> = idx.iter().map(|&i| i as usize).collect();
            let k = gaps::best_k(&pos);
            if gaps::encoded_len(&pos, k) < positions.3.len() {
                let stream = gaps::encode(&pos, k);
                (format!("{name}{SPARSE_GAPS}{k}"), Dtype::U8, vec![stream.len()], stream)
            } else {
                positions
            }
        } else {
            positions
        };
        let mut sparse = values;
        sparse.push(positions);
        if stored_len(&sparse) < stored_len(&best) {
            best = sparse;
        }
    }
    out.extend(best);
}

fn checksum<'a>(entries: impl Iterator<Item = (&'a str, &'a [u8])>) -> String {
    let mut h = crc32fast::Hasher::new();
    for (name, data) in entries {
        h.update(name.as_bytes());
        h.update(&(data.len() as u64).to_le_bytes());
        h.update(data);
    }
    format!("{:08x}", h.finalize())
}

pub fn to_bytes(model: &Model, extras: &Extras) -> Result<Vec<u8>> {
    to_bytes_as(model, extras, FORMAT_VERSION)
}

/// The file in format `version` (2 or the current one): version 2 can be read by penni releases
/// from before the `#gaps` form, and is larger for pruned models.
pub fn to_bytes_as(model: &Model, extras: &Extras, version: u32) -> Result<Vec<u8>> {
    if !(2..=FORMAT_VERSION).contains(&version) {
        return Err(ModelError::Graph(format!(
            "cannot write format version {version} (2 to {FORMAT_VERSION})"
        )));
    }
    model.validate()?;
    let graph = GraphJson {
        name: model.name.clone(),
        input: model.input.clone(),
        nodes: model
            .nodes
            .iter()
            .map(|n| NodeJson {
                name: n.name.clone(),
                op: n.op.clone(),
                inputs: n.inputs.clone(),
                output: n.output.clone(),
            })
            .collect(),
        output: model.output.clone(),
    };
    let mut entries = Vec::new();
    for node in &model.nodes {
        for (pname, t) in &node.params {
            // the groups a quantizer uses: output channels (also the coefficients' rows per
            // output channel), or the first dimension (bases, weights)
            let mut groups = vec![t.shape.first().copied().unwrap_or(1)];
            if let (Op::DecomposedConv2d(c), "coefficients") = (&node.op, pname.as_str()) {
                groups.insert(0, c.conv.out_channels);
            }
            encode(&format!("{}.{pname}", node.name), t, &groups, version, &mut entries);
        }
    }
    for (name, t) in &extras.tensors {
        // Extras stay dense f32: their shape is not implied by the graph.
        entries.push((format!("{EXTRA_PREFIX}{name}"), Dtype::F32, t.shape.clone(), f32_bytes(&t.data)));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "penni".to_string());
    meta.insert("format_version".to_string(), version.to_string());
    meta.insert("graph".to_string(), serde_json::to_string(&graph).expect("graph serialises"));
    meta.insert(
        "extra".to_string(),
        serde_json::to_string(&extras.metadata).expect("map serialises"),
    );
    meta.insert(
        "checksum".to_string(),
        checksum(entries.iter().map(|e| (e.0.as_str(), e.3.as_slice()))),
    );
    let views: Vec<(String, TensorView)> = entries
        .iter()
        .map(|(n, dt, shape, data)| {
            (
                n.clone(),
                TensorView::new(*dt, shape.clone(), data).expect("sizes match by construction"),
            )
        })
        .collect();
    safetensors::serialize(views, Some(meta)).map_err(|e| ModelError::Graph(format!("cannot serialise: {e}")))
}

pub fn save(model: &Model, path: &Path) -> Result<()> {
    save_with_extras(model, &Extras::default(), path)
}

pub fn save_with_extras(model: &Model, extras: &Extras, path: &Path) -> Result<()> {
    write_atomic(path, &to_bytes(model, extras)?)
}

pub fn load(path: &Path) -> Result<Model> {
    Ok(load_with_extras(path)?.0)
}

pub fn load_with_extras(path: &Path) -> Result<(Model, Extras)> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, path)
}

/// Parses a `.penni` file held in memory; `path` only names it in errors.
pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<(Model, Extras)> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| file_err(path, format!("not a valid .penni (safetensors) file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| file_err(path, e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("penni") {
        return Err(file_err(
            path,
            "a safetensors file, but not a penni model (no 'format: penni' in its metadata)",
        ));
    }
    let version: u32 = meta
        .get("format_version")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| file_err(path, "missing or unreadable format_version"))?;
    if version > FORMAT_VERSION {
        return Err(ModelError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let mut names: Vec<&str> = st.names();
    names.sort_unstable();
    let stored_sum = meta.get("checksum").ok_or_else(|| file_err(path, "missing checksum"))?;
    let views: Vec<(&str, TensorView)> = names
        .iter()
        .map(|n| Ok((*n, st.tensor(n).map_err(|e| file_err(path, e.to_string()))?)))
        .collect::<Result<_>>()?;
    let actual = checksum(views.iter().map(|(n, v)| (*n, v.data())));
    if &actual != stored_sum {
        return Err(file_err(
            path,
            format!("checksum mismatch (stored {stored_sum}, computed {actual}): the file is corrupt"),
        ));
    }
    let views: HashMap<&str, TensorView> = views.into_iter().collect();
    let graph: GraphJson = serde_json::from_str(meta.get("graph").ok_or_else(|| file_err(path, "missing graph"))?)
        .map_err(|e| file_err(path, format!("graph description is invalid: {e}")))?;

    // A sparse or packed tensor's size is declared, not all stored: bound it by the file.
    let mut sparse_budget = bytes.len().saturating_mul(1024);
    let mut used = std::collections::HashSet::new();
    let mut take = |name: &str, shape: &[usize]| -> Result<Tensor> { decode(&views, name, shape, path, &mut sparse_budget, &mut used) };
    let mut nodes = Vec::with_capacity(graph.nodes.len());
    for n in graph.nodes {
        let mut params = BTreeMap::new();
        for (pname, shape) in n.op.param_shapes() {
            params.insert(pname.to_string(), take(&format!("{}.{pname}", n.name), &shape)?);
        }
        nodes.push(Node {
            name: n.name,
            op: n.op,
            inputs: n.inputs,
            output: n.output,
            params,
        });
    }
    let mut extras = Extras {
        metadata: match meta.get("extra") {
            Some(s) => serde_json::from_str(s).map_err(|e| file_err(path, format!("extra metadata is invalid: {e}")))?,
            None => BTreeMap::new(),
        },
        tensors: BTreeMap::new(),
    };
    let extra_names: Vec<String> = views
        .keys()
        .filter(|k| k.starts_with(EXTRA_PREFIX))
        .map(|k| k.to_string())
        .collect();
    for full in extra_names {
        let shape = views[full.as_str()].shape().to_vec();
        let t = take(&full, &shape)?;
        extras.tensors.insert(full[EXTRA_PREFIX.len()..].to_string(), t);
    }
    if let Some(stray) = views.keys().find(|k| !used.contains(**k)) {
        return Err(file_err(path, format!("tensor '{stray}' belongs to no node of the graph")));
    }
    let model = Model {
        name: graph.name,
        input: graph.input,
        nodes,
        output: graph.output,
    };
    model.validate().map_err(|e| file_err(path, e.to_string()))?;
    Ok((model, extras))
}

fn decode(
    views: &HashMap<&str, TensorView>,
    name: &str,
    shape: &[usize],
    path: &Path,
    sparse_budget: &mut usize,
    used: &mut std::collections::HashSet<String>,
) -> Result<Tensor> {
    let numel = checked_numel(shape).ok_or_else(|| file_err(path, format!("tensor '{name}': shape {shape:?} overflows")))?;
    if let Some(v) = views.get(name) {
        if v.dtype() != Dtype::F32 {
            return Err(file_err(path, format!("tensor '{name}' is {:?}, expected F32", v.dtype())));
        }
        if v.shape() != shape {
            return Err(file_err(
                path,
                format!("tensor '{name}' has shape {:?}, the graph needs {shape:?}", v.shape()),
            ));
        }
        used.insert(name.to_string());
        return Ok(Tensor {
            shape: shape.to_vec(),
            data: read_f32(v.data()),
        });
    }
    // every other form's size is declared, not all stored: bound it by the file so a tiny file
    // cannot make us allocate gigabytes
    if numel > *sparse_budget || numel > u32::MAX as usize {
        return Err(file_err(
            path,
            format!("tensor '{name}' declares {numel} values, more than a file of this size can describe"),
        ));
    }
    *sparse_budget -= numel;
    let bad = |what: String| file_err(path, format!("tensor '{name}': {what}"));
    let u8_view = |suffix: &str| -> Result<Option<(String, &TensorView)>> {
        let n = format!("{name}{suffix}");
        match views.get(n.as_str()) {
            None => Ok(None),
            Some(v) if v.dtype() == Dtype::U8 && v.shape().len() == 1 => Ok(Some((n, v))),
            Some(_) => Err(bad(format!("'{suffix}' must be a 1-D U8 tensor"))),
        }
    };
    // the `#gaps{k}` entry of this tensor, if any (k is in its name; other spellings are
    // stray tensors)
    let gaps_view = || -> Result<Option<(String, u32, &TensorView)>> {
        let found: Vec<(String, u32, &TensorView)> = (0..=gaps::MAX_K)
            .filter_map(|k| {
                let n = format!("{name}{SPARSE_GAPS}{k}");
                views.get(n.as_str()).map(|v| (n, k, v))
            })
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => {
                let (n, k, v) = found.into_iter().next().expect("one");
                if v.dtype() != Dtype::U8 || v.shape().len() != 1 {
                    return Err(bad(format!("'{n}' must be a 1-D U8 tensor")));
                }
                Ok(Some((n, k, v)))
            }
            _ => Err(bad("more than one '#gaps' entry".into())),
        }
    };
    // positions: the non-zeros' (sparse), or all of them
    let iname = format!("{name}{SPARSE_INDICES}");
    let positions: Option<Vec<usize>> = if let Some(iv) = views.get(iname.as_str()) {
        if iv.dtype() != Dtype::U32 || iv.shape().len() != 1 {
            return Err(bad("indices must be a 1-D U32 tensor".into()));
        }
        let mut last: Option<u32> = None;
        let mut pos = Vec::with_capacity(iv.shape()[0]);
        for c in iv.data().chunks_exact(4) {
            let i = u32::from_le_bytes(c.try_into().expect("chunk of 4"));
            if i as usize >= numel || last.is_some_and(|l| i <= l) {
                return Err(bad(format!("index {i} out of range or out of order")));
            }
            last = Some(i);
            pos.push(i as usize);
        }
        used.insert(iname);
        Some(pos)
    } else if let Some((gname, k, gv)) = gaps_view()? {
        let pos = gaps::decode(gv.data(), k, numel).map_err(|e| bad(format!("positions ('{gname}'): {e}")))?;
        used.insert(gname);
        Some(pos)
    } else if let Some((mname, mv)) = u8_view(SPARSE_MASK)? {
        if mv.shape()[0] != numel.div_ceil(8) {
            return Err(bad(format!("a mask of {} bytes for {numel} values", mv.shape()[0])));
        }
        let m = mv.data();
        let pos: Vec<usize> = (0..numel).filter(|&i| m[i / 8] >> (i % 8) & 1 == 1).collect();
        if (numel..numel.div_ceil(8) * 8).any(|i| m[i / 8] >> (i % 8) & 1 == 1) {
            return Err(bad("mask bits set past the end".into()));
        }
        used.insert(mname);
        Some(pos)
    } else {
        None
    };
    let count = positions.as_ref().map_or(numel, Vec::len);
    let pos_ref = positions.as_deref();
    let group_of = |len: usize| move |j: usize| pos_ref.map_or(j, |p| p[j]) / len;
    // values: f32, or packed integers on a per-group grid
    let vname = format!("{name}{SPARSE_VALUES}");
    let values: Vec<f32> = if let Some(vv) = views.get(vname.as_str()) {
        if vv.dtype() != Dtype::F32 || vv.shape() != [count] || positions.is_none() {
            return Err(bad(format!("values must be a 1-D F32 tensor of {count}, beside positions")));
        }
        used.insert(vname);
        read_f32(vv.data())
    } else {
        let found = (2..=grid::MAX_BITS)
            .map(|b| (b, u8_view(&format!("#q{b}"))))
            .find(|(_, v)| !matches!(v, Ok(None)));
        let Some((bits, q)) = found else {
            return Err(file_err(path, format!("tensor '{name}' is missing")));
        };
        let (qname, qv) = q?.expect("found above");
        let sname = format!("{name}{QUANT_SCALES}");
        let sv = views
            .get(sname.as_str())
            .ok_or_else(|| bad("packed values without their scales".into()))?;
        let groups = sv.shape().first().copied().unwrap_or(0);
        if sv.dtype() != Dtype::F32 || sv.shape().len() != 1 || groups == 0 || groups > numel.max(1) {
            return Err(bad(format!("scales must be a 1-D F32 tensor of 1 to {numel} groups")));
        }
        if Some(qv.shape()[0]) != grid::packed_len(count, bits) {
            return Err(bad(format!("{} bytes of {bits}-bit values for {count} values", qv.shape()[0])));
        }
        let scales = read_f32(sv.data());
        if scales.iter().any(|s| !s.is_finite()) {
            return Err(bad("a scale is not finite".into()));
        }
        let v = grid::unpack(qv.data(), count, bits, &scales, group_of(numel.div_ceil(groups)))
            .ok_or_else(|| bad("a packed value is outside its grid".into()))?;
        used.insert(qname);
        used.insert(sname);
        v
    };
    let data = match &positions {
        None => values,
        Some(pos) => {
            let mut data = vec![0.0f32; numel];
            for (&i, v) in pos.iter().zip(values) {
                data[i] = v;
            }
            data
        }
    };
    Ok(Tensor {
        shape: shape.to_vec(),
        data,
    })
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunk of 4")))
        .collect()
}
