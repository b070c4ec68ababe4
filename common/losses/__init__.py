"""Distillation losses: pure functions on tensors plus registered, combinable terms.

Importing this package registers every built-in term in :data:`LOSSES`.
"""

from common.losses.attention import (
    AttentionKLTerm,
    AttentionTransferTerm,
    attention_kl_loss,
    attention_loss,
    attention_map,
)
from common.losses.crd import (
    CRDTerm,
    bank_update,
    crd_loss,
    init_bank,
    negatives_generator,
    sample_negatives,
)
from common.losses.dist import DISTTerm, dist_loss, pearson_rows
from common.losses.hint import HintTerm, hint_loss, make_regressor
from common.losses.kd import CrossEntropyTerm, DKDTerm, KDTerm, dkd_loss, kd_ce_loss, kd_loss
from common.losses.lskd import LSKDTerm, lskd_loss, standardize_logits
from common.losses.policy import (
    GaussianPolicyKLTerm,
    PolicyDistillationTerm,
    gaussian_policy_kl,
    policy_distillation_loss,
)
from common.losses.registry import (
    LOSSES,
    CombinedLoss,
    LossOutput,
    LossTerm,
    Reads,
    Registry,
    build_loss,
    parse_loss_spec,
)
from common.losses.relational import (
    PKTTerm,
    RKDTerm,
    SPTerm,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)

__all__ = [
    "LOSSES",
    "AttentionKLTerm",
    "AttentionTransferTerm",
    "CRDTerm",
    "CombinedLoss",
    "CrossEntropyTerm",
    "DISTTerm",
    "DKDTerm",
    "GaussianPolicyKLTerm",
    "HintTerm",
    "KDTerm",
    "LSKDTerm",
    "LossOutput",
    "LossTerm",
    "PKTTerm",
    "PolicyDistillationTerm",
    "RKDTerm",
    "Reads",
    "Registry",
    "SPTerm",
    "attention_kl_loss",
    "attention_loss",
    "attention_map",
    "bank_update",
    "build_loss",
    "crd_loss",
    "dist_loss",
    "dkd_loss",
    "gaussian_policy_kl",
    "hint_loss",
    "init_bank",
    "kd_ce_loss",
    "kd_loss",
    "lskd_loss",
    "make_regressor",
    "negatives_generator",
    "parse_loss_spec",
    "pearson_rows",
    "pkt_loss",
    "policy_distillation_loss",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "sample_negatives",
    "sp_loss",
    "standardize_logits",
]
