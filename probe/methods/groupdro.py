"""GroupDRO (Sagawa et al. 2020)."""

from __future__ import annotations

from probe.methods.base import GradientMethod, register
from probe.records.grid import Param


@register
class GroupDRO(GradientMethod):
    """Online exponentiated-gradient weights q over the domain losses, q_e ← q_e·exp(η·L_e),
    renormalised; the loss is Σ_e q_e L_e. ``q`` is per head, (G, K), and starts uniform."""

    name = "groupdro"
    display = "GroupDRO"
    summary = "groupdro: GroupDRO, exponentiated-gradient weights on the domain losses (eta)"
    params = (Param("eta", "GroupDRO step size η of its exponentiated-gradient domain weights.", default=1e-2,
                    grid=(1e-3, 1e-2, 1e-1), search=("log", 1e-4, 1e0), symbol="η"),)
    ce_default = None

    def base_loss(self, losses, batch):
        import torch

        ids = batch.ids
        if not hasattr(self, "q"):
            self.q = torch.full((losses.shape[0], batch.num_domains), 1.0 / batch.num_domains,
                                dtype=losses.dtype, device=losses.device)
        with torch.no_grad():
            # Domains absent from the batch keep their mass; only present ones move.
            present = self.q[:, ids]
            q = present * torch.exp(self.hp["eta"].unsqueeze(-1) * losses.detach())
            self.q[:, ids] = q / q.sum(-1, keepdim=True) * present.sum(-1, keepdim=True)
        w = self.q[:, ids]
        robust = (w * losses).sum(-1) / w.sum(-1)
        return robust, {"ce": losses.mean(-1), "robust": robust}
