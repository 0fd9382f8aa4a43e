//! The decoding layout of a model's weights: which matrices get a copy (row-interleaved for the
//! kernel set, or plain on huge pages), the ToMoE experts' rows gathered into extra groups of
//! those copies and the order decoding reads them in, all written into one arena at load.

use crate::gguf::GgufFile;
use crate::huge_pages::{self, HugeBuf};
use crate::model::tomoe::TomoeMlp;
use crate::model::{Mlp, Weights};
use std::ops::Range;
use tomoe_quant::kernels::interleave::GROUP;
use tomoe_quant::{CopyLayout, ExtraGroup, MatRef};

/// How decoding reads the experts of one ToMoE layer whose MLP copies hold its experts'
/// scattered rows gathered into extra groups (see `engine::plan::gather_plan`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpertReads {
    /// Per expert, the row runs decoding reads in the MLP matrices' copies.
    pub runs: Vec<Vec<Range<usize>>>,
    /// Per expert, for each row of `runs` in order, its index in the expert's `expert_rows`
    /// (`None`: a zero row padding an extra group).
    pub order: Vec<Vec<Option<u32>>>,
}

impl ExpertReads {
    /// Expert `e` of `m` as decoding reads it: its row runs and, for each of their rows, its
    /// index in `expert_rows` (empty: the runs are the expert's own `expert_runs`, read in order,
    /// as they are without `reads`).
    pub(crate) fn of<'r>(
        reads: Option<&'r ExpertReads>,
        m: &'r TomoeMlp,
        e: usize,
    ) -> (&'r [Range<usize>], &'r [Option<u32>]) {
        match reads {
            Some(r) => (&r.runs[e], &r.order[e]),
            None => (&m.expert_runs[e], &[]),
        }
    }
}

/// A layer's [`ExpertReads`] and the extra groups its MLP copies get for them.
pub(crate) struct GatherPlan {
    /// The extra groups to append to the copies, every expert's in turn.
    pub extra: Vec<ExtraGroup>,
    pub reads: ExpertReads,
}

/// Where each expert's rows are read from when decoding, for MLP matrices of `rows` rows whose
/// interleaved copies get the plan's extra groups (`MatRef::interleave_extra`): the whole groups
/// of 16 inside the expert's runs from the copies' own groups (shared by the experts), then its
/// other rows (the runs' ends within a group, the runs shorter than one) gathered, in order, into
/// extra groups of its own, padded with zero rows, which the copies hold as the rows past `rows`
/// rounded up to 16. An expert is then read as whole groups, in a few long runs, with no byte
/// read for another expert's rows: faster decoding for larger copies (BENCHMARKS.md, "Sparse
/// ToMoE decoding").
pub(crate) fn gather_plan(m: &TomoeMlp, rows: usize) -> GatherPlan {
    let mut extra = Vec::new();
    let mut reads = ExpertReads { runs: Vec::new(), order: Vec::new() };
    for runs in &m.expert_runs {
        let (mut read, mut order, mut scattered) = (Vec::new(), Vec::new(), Vec::new());
        let mut first = 0u32;
        for run in runs {
            let whole = run.start.next_multiple_of(GROUP)..run.end / GROUP * GROUP;
            for r in run.clone() {
                let i = first + (r - run.start) as u32;
                if !whole.contains(&r) {
                    scattered.push((r, i));
                }
            }
            if !whole.is_empty() {
                order.extend((whole.start - run.start..whole.end - run.start).map(|k| Some(first + k as u32)));
                read.push(whole);
            }
            first += run.len() as u32;
        }
        if !scattered.is_empty() {
            let start = rows.next_multiple_of(GROUP) + GROUP * extra.len();
            for chunk in scattered.chunks(GROUP) {
                extra.push(std::array::from_fn(|l| chunk.get(l).map(|&(r, _)| r)));
                order.extend((0..GROUP).map(|l| chunk.get(l).map(|&(_, i)| i)));
            }
            read.push(start..rows.next_multiple_of(GROUP) + GROUP * extra.len());
        }
        reads.runs.push(read);
        reads.order.push(order);
    }
    GatherPlan { extra, reads }
}

/// The weights as decoding reads them, and the arena of copies they view.
pub(crate) struct DecodePlan<'a> {
    // Declared before `arena`: views into it, dropped first.
    /// The file's weights with their matrices pointed at their copies; `None` when nothing was
    /// copied (decoding reads the file's weights).
    weights: Option<Weights<'a>>,
    /// Per layer, how decoding reads a ToMoE layer's experts; `None`: from their own runs.
    reads: Vec<Option<ExpertReads>>,
    /// Every matrix's copy, one after the other.
    arena: HugeBuf<u8>,
    /// Whether the token embedding's file bytes were given back for the output's copy (a tied
    /// embedding), so that its rows are read from the file without mapping them again.
    embedding_given_back: bool,
}

/// A matrix's copy: interleaved in a layout, or its bytes as they are (`None`).
struct MatCopy {
    interleaved: Option<CopyLayout>,
    len: usize,
}

impl<'a> DecodePlan<'a> {
    /// No copies: decoding reads the file.
    pub(crate) fn file_only() -> DecodePlan<'a> {
        let arena = HugeBuf::zeroed(0).expect("an empty buffer maps nothing");
        DecodePlan { weights: None, reads: Vec::new(), arena, embedding_given_back: false }
    }

    /// Gives the matrices of `w` (views into `file`) their decoding copies, all in one arena (on
    /// huge pages where the kernel has them), with the process's kernel set:
    /// - every matrix the kernel set can interleave (`MatRef::interleave`) its interleaved copy.
    ///   Matrix-vector products (decoding) then run on the copies, bit-identically and with a
    ///   fraction of the instructions; batches keep reading the mapped file. The ToMoE down
    ///   projections (read by rows) get the layout of the weighted row sums instead, and a ToMoE
    ///   layer's MLP copies get its experts' scattered rows gathered into extra groups
    ///   ([`gather_plan`]);
    /// - for a mapped file on a system with huge pages, every other matrix (stacked experts
    ///   included) a copy of its bytes, which it then reads instead of the file (decoding and
    ///   batches alike): only huge pages make that worth its memory, and a file in memory is not
    ///   worth a second copy.
    ///
    /// Copying a matrix reads its bytes in and nothing reads them again: the file's pages a copy
    /// replaces are given back as it is written, and all together at the end, the pages between
    /// them included (`GgufFile::release_many`).
    pub(crate) fn new(w: &Weights<'a>, file: &GgufFile) -> std::io::Result<DecodePlan<'a>> {
        let set = tomoe_quant::dispatch::kernels();
        let plain = file.is_mapped() && huge_pages::available();
        let mut weights = w.clone();
        // A ToMoE layer's experts read whole groups only, their scattered rows gathered into
        // extra groups, where all three copies can hold them.
        let gathers: Vec<Option<GatherPlan>> = weights
            .layers
            .iter()
            .map(|l| match &l.mlp {
                Mlp::Tomoe(m)
                    if set.interleaved(m.gate.ty()).is_some()
                        && set.interleaved(m.up.ty()).is_some()
                        && set.interleaved_axpy(m.down_t.ty()).is_some() =>
                {
                    Some(gather_plan(m, m.gate.rows()))
                }
                _ => None,
            })
            .collect();
        // Each matrix with the interleaved layout it may have (None: stacked experts), the extra
        // groups that copy holds, and whether only products read it, so that it can give back
        // the file bytes its copy replaces (a ToMoE expert's rows are read from the file too).
        let mut targets: Vec<(&mut MatRef<'a>, Option<CopyLayout>, &[ExtraGroup], bool)> = Vec::new();
        for (l, gather) in weights.layers.iter_mut().zip(&gathers) {
            let extra = gather.as_ref().map_or(&[][..], |g| &g.extra);
            let dense = matches!(l.mlp, Mlp::Dense(_));
            let a = &mut l.attn;
            let v_mask_in = a.vmask.as_mut().map(|vm| &mut vm.w_a);
            for m in [&mut a.wq, &mut a.wk, &mut a.wv, &mut a.wo].into_iter().chain(v_mask_in) {
                targets.push((m, Some(CopyLayout::MatVec), &[], true));
            }
            let (gate, up, down, mlp, down_lay) = match &mut l.mlp {
                Mlp::Dense(m) => {
                    (&mut m.gate, &mut m.up, &mut m.down, Some(CopyLayout::MatVec), Some(CopyLayout::MatVec))
                }
                Mlp::Stacked(x) => (&mut x.gate, &mut x.up, &mut x.down, None, None),
                Mlp::Tomoe(m) => {
                    (&mut m.gate, &mut m.up, &mut m.down_t, Some(CopyLayout::MatVec), Some(CopyLayout::Axpy))
                }
            };
            targets.push((gate, mlp, extra, dense));
            targets.push((up, mlp, extra, dense));
            targets.push((down, down_lay, extra, dense));
        }
        targets.push((&mut weights.output, Some(CopyLayout::MatVec), &[], true));
        let copies: Vec<Option<MatCopy>> = targets
            .iter()
            .map(|(m, lay, ex, _)| match lay.and_then(|lay| Some((lay, m.copy_len(lay, ex.len())?))) {
                Some((lay, len)) => Some(MatCopy { interleaved: Some(lay), len }),
                None => plain.then(|| MatCopy { interleaved: None, len: m.data().len() }),
            })
            .collect();
        let (mut arena, at) = HugeBuf::<u8>::parts(copies.iter().map(|c| c.as_ref().map_or(0, |c| c.len)))?;
        let mut given_back = Vec::new();
        let mut release = |bytes: &'a [u8]| {
            file.release(bytes);
            given_back.push(bytes);
        };
        for ((m, _, ex, products_only), (c, r)) in targets.iter().zip(copies.iter().zip(&at)) {
            let Some(c) = c else { continue };
            let out = &mut arena[r.clone()];
            match c.interleaved {
                Some(lay) => {
                    // Given back as the copy is written, so that the file and the copies are
                    // never both resident.
                    let gives_back = *products_only && m.bytes_a_copy_replaces().is_some();
                    m.interleave_into(lay, ex, out, |done| {
                        if gives_back {
                            release(done)
                        }
                    })
                    .expect("copy_len said the set has the kernel");
                }
                None => {
                    out.copy_from_slice(m.data());
                    release(m.data());
                }
            }
        }
        // Only a tied output's copy gives back bytes of the embedding.
        let embd = w.token_embd.data().as_ptr_range();
        let embedding_given_back = given_back.iter().any(|b| embd.contains(&b.as_ptr()));
        file.release_many(given_back);
        // SAFETY: the arena's mapping never moves or changes once written, and this plan holds
        // it unmutated, dropping it after `weights` (field order); the views leave the plan only
        // bounded by `&self`.
        let view: &'a [u8] = unsafe { &*(&*arena as *const [u8]) };
        let mut copied = false;
        for ((m, _, _, _), (c, r)) in targets.into_iter().zip(copies.iter().zip(&at)) {
            let Some(c) = c else { continue };
            let data = &view[r.clone()];
            *m = match c.interleaved {
                Some(lay) => m.with_copy(lay, data),
                None => MatRef::new(m.ty(), m.rows(), m.cols(), data),
            }
            .expect("the copy is the size it was made");
            copied = true;
        }
        let reads = gathers.into_iter().map(|g| g.map(|g| g.reads)).collect();
        Ok(DecodePlan { weights: copied.then_some(weights), reads, arena, embedding_given_back })
    }

    /// The weights decoding reads, if they differ from the file's.
    pub(crate) fn weights(&self) -> Option<&Weights<'_>> {
        self.weights.as_ref()
    }

    /// How decoding reads layer `il`'s experts; `None`: from their own runs (also for a layer
    /// that is not a ToMoE layer).
    pub(crate) fn expert_reads(&self, il: usize) -> Option<&ExpertReads> {
        self.reads.get(il)?.as_ref()
    }

    /// Whether the token embedding's rows are to be given back to the file once read.
    pub(crate) fn embedding_given_back(&self) -> bool {
        self.embedding_given_back
    }

    /// Bytes of the copies.
    pub(crate) fn copies_bytes(&self) -> usize {
        self.arena.len()
    }
}

#[cfg(test)]
mod tests {
    use super::gather_plan;
    use crate::model::tomoe::TomoeMlp;
    use tomoe_quant::{MatRef, QuantType};

    /// An expert's whole groups stay in place; its other rows (a run's end inside a group, a run
    /// shorter than a group) go, in order, to extra groups of its own past the matrix's rows
    /// rounded up to 16, padded with zero rows; `order` maps each read row back.
    #[test]
    fn gather_plan_keeps_whole_groups_and_gathers_the_rest() {
        let runs = vec![vec![0..40, 45..47, 64..96], vec![50..53], vec![]];
        let bytes = [0u8; 400];
        let w = MatRef::new(QuantType::F32, 100, 1, &bytes).unwrap();
        let m = TomoeMlp {
            gate: w,
            up: w,
            down_t: w,
            router: Vec::new(),
            expert_bias: None,
            expert_rows: runs.iter().map(|r| r.iter().flat_map(|r| r.clone()).collect()).collect(),
            expert_runs: runs,
            union: 100,
        };
        let plan = gather_plan(&m, 100);
        let reads = &plan.reads;
        // Expert 0: groups 0..32 and 64..96 in place, rows 32..40 and 45..47 in one extra group.
        assert_eq!(reads.runs[0], vec![0..32, 64..96, 112..128]);
        let some = |r: std::ops::Range<u32>| r.map(Some).collect::<Vec<_>>();
        let mut want = some(0..32);
        want.extend(some(42..74)); // rows 64..96 are the expert's rows 42..74
        want.extend(some(32..42)); // rows 32..40 and 45..47
        want.extend([None; 6]);
        assert_eq!(reads.order[0], want);
        let rows_of = |g: &[Option<usize>; 16]| g.iter().flatten().copied().collect::<Vec<_>>();
        assert_eq!(rows_of(&plan.extra[0]), vec![32, 33, 34, 35, 36, 37, 38, 39, 45, 46]);
        // Expert 1: one short run, gathered into the next extra group; expert 2: nothing.
        assert_eq!(reads.runs[1], vec![128..144]);
        assert_eq!(rows_of(&plan.extra[1]), vec![50, 51, 52]);
        assert!(reads.runs[2].is_empty() && reads.order[2].is_empty());
        assert_eq!(plan.extra.len(), 2);
    }
}
