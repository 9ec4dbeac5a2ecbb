"""`plan --num_slices`: the cross-slice (DCN) traffic read from a compiled program's text. Runs
without libtpu on a hand-written program in the form the TPU compiler prints (tests/commands/
test_plan.py compiles a real two-slice step)."""
import pytest

from sparse_tubes.commands import plan


def megascale(kind: str) -> str:
  """The attributes of a cross-slice transfer, as the TPU compiler prints them."""
  return ('is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name='
          '"xla_megascale_runtime",_xla_megascale_reduce_operation="SUM",'
          f'_xla_megascale_transfer_type="{kind}"' + '}')


HLO = """HloModule jit_step, entry_computation_layout={(f32[2]{0})->f32[2]{0}}

%cond.1 (p.1: (s32[], f32[4,128])) -> pred[] {
  %p.1 = (s32[], f32[4,128]{1,0}) parameter(0)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  %n.1 = s32[]{:T(128)} constant(3)
  ROOT %lt.1 = pred[]{:T(512)} compare(%i.1, %n.1), direction=LT
}

%body.1 (p.2: (s32[], f32[4,128])) -> (s32[], f32[4,128]) {
  %p.2 = (s32[], f32[4,128]{1,0}) parameter(0)
  %x.2 = f32[4,128]{1,0:T(8,128)} get-tuple-element(%p.2), index=1
  %tok.2 = token[] after-all()
  %send.2 = (f32[4,128]{1,0:T(8,128)}, u32[], token[]) send(%x.2, %tok.2), channel_id=2, @ALL_REDUCE@
  %recv.2 = (f32[4,128]{1,0:T(8,128)}, u32[], token[]) recv(%tok.2), channel_id=3, @ALL_REDUCE@
  ROOT %t.2 = (s32[], f32[4,128]{1,0}) tuple(%i.2, %x.2)
}

%cond.3 (p.3: (s32[])) -> pred[] {
  %p.3 = (s32[]) parameter(0)
  %i.3 = s32[] get-tuple-element(%p.3), index=0
  %a.3 = s32[] constant(1)
  %b.3 = s32[] constant(5)
  ROOT %lt.3 = pred[] compare(%i.3, %b.3), direction=LT
}

%body.3 (p.4: (s32[])) -> (s32[]) {
  %send.4 = (f32[2]{0}, u32[], token[]) send(%y.4, %tok.4), channel_id=4, @ONE_TO_ONE@
  ROOT %t.4 = (s32[]) tuple(%i.4)
}

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main.9_spmd (param.1: f32[2]) -> f32[2] {
  %send.5 = (bf16[8,128]{1,0:T(8,128)(2,1)}, u32[], token[]) send(%z.5, %tok.5), channel_id=6, @ALL_GATHER@
  %w.6 = (s32[], f32[4,128]{1,0}) while(%t.6), condition=%cond.1, body=%body.1, metadata={op_name="jit(step)/while"}
  %w.7 = (s32[]) while(%t.7), condition=%cond.3, body=%body.3
  %ar.8 = f32[16]{0} all-reduce(%v.8), channel_id=1, replica_groups={{0,1,2,3}}, use_global_device_ids=true, to_apply=%add
  ROOT %r.9 = f32[2]{0} copy(%param.1)
}
"""
for _kind in ('ALL_REDUCE', 'ALL_GATHER', 'ONE_TO_ONE'):
  HLO = HLO.replace(f'@{_kind}@', megascale(_kind))


def test_cross_slice_sends_counted_per_loop_iteration():
  by_kind, unknown = plan.dcn_transfers(HLO)
  # The all-reduce in a 3-iteration loop (a micro-batch loop: `i < 3`) counts 3 times, padded
  # f32[4,128]; the bf16 all-gather once; the in-slice all-reduce (replica groups inside one slice,
  # no MegaScale transfer) and the receives not at all; a loop whose bound is unreadable once.
  assert by_kind == {'ALL_REDUCE': 3 * 4 * 128 * 4, 'ALL_GATHER': 8 * 128 * 2, 'ONE_TO_ONE': 2 * 4}
  assert unknown == 1


@pytest.mark.parametrize('slices,factor_ar,factor_ag', [(2, 1.0, 1), (4, 1.5, 3)])
def test_dcn_seconds_and_bound(slices, factor_ar, factor_ag):
  r = plan.dcn_report(HLO, slices, 25.0, compute_s=1e-6)
  assert r['dcn_bytes_per_step'] == 6144 + 2048 + 8
  # Bytes a chip sends: ring all-reduce 2(S-1)/S of the buffer, all-gather S-1 copies of its part.
  assert r['dcn_seconds_per_step'] == pytest.approx(
      (6144 * factor_ar + 2048 * factor_ag + 8) * 8 / 25e9)
  assert r['dcn_bound'] and not plan.dcn_report(HLO, slices, 25.0, compute_s=1.0)['dcn_bound']
  assert plan.dcn_report(HLO, 1, 25.0, 1.0)['dcn_bytes_per_step'] == 0
