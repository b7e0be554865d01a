"""The cost stage: break-even of fine-tuning against prompting from measured figures, and advice.

    cost_report(inputs, prices) -> CostReport      inputs: CostInputs (load_inputs reads tunekit's records)
    advise(situation, prices) -> Advice            the decision rules, with starter recipes for fine-tune cases
"""

from tunekit.cost.advise import Advice, Finding, Situation
from tunekit.cost.breakeven import CostReport, Figure, SensitivityCell
from tunekit.cost.decide import advise, load_situation
from tunekit.cost.inputs import CostInputs
from tunekit.cost.load import build_inputs, load_inputs
from tunekit.cost.plot import PlotMarks, plot_cost_curves
from tunekit.cost.prices import PriceTable, load_prices
from tunekit.cost.report import break_even, cost_report

__all__ = [
    "Advice", "CostInputs", "CostReport", "Figure", "Finding", "PlotMarks", "PriceTable", "SensitivityCell", "Situation",
    "advise", "break_even", "build_inputs", "cost_report", "load_inputs", "load_prices", "load_situation", "plot_cost_curves",
]  # fmt: skip
