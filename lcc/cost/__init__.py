"""lcc.cost: symbolic cost of a program (FLOPs, bytes, memory, roofline time in the sequence length),
hardware profiles, quality risk from measured data, and the planner that picks passes."""

from lcc.cost.calibrate import calibrate  # noqa: F401
from lcc.cost.hardware import Profile, available as available_profiles, load_profile  # noqa: F401
from lcc.cost.memory import KVLayoutCost, register_kv_layout  # noqa: F401
from lcc.cost.model import Evaluation, ProgramCost, program_cost  # noqa: F401
from lcc.cost.nodes import register_rule  # noqa: F401
from lcc.cost.planner import Candidate, Plan, plan, plan_for_compile  # noqa: F401
from lcc.cost.plot import plot_cost  # noqa: F401
from lcc.cost.symbols import C, K, L  # noqa: F401
