--[[
Table 1 of Gastaldi (2017), "Shake-Shake regularization": test error (%) on
CIFAR-10 of 26 2xKd Shake-Shake ResNets for each forward-backward-level
combination, cell for cell. Only the 17 cells the paper reports are run.

Recipe (the paper's): 1800 epochs of cosine-annealed SGD from LR 0.2, batch
128, weight decay 1e-4, momentum 0.9, standard CIFAR augmentation. The paper
reports the last epoch's error, averaged over 3 runs (5 for the 2x96d
models), and so does this sweep: 55 runs.

Repeat k (from 0) of a cell runs with seed 1 + k.
]]
local sweep = require "sweep"

-- One row of the table: a mode (forward-backward-level) and the errors the
-- paper reports for it, by column; a row stops at its last reported cell.
local widths = {32, 64, 96, 112}
local function row(mode, errors)
  local cells = {}
  for i = 1, #widths do
    if errors[i] then
      local c = sweep.mode(mode)
      c.width, c.ref = widths[i], errors[i]
      cells[#cells + 1] = sweep.cell(c)
    end
  end
  return cells
end

return sweep.sweep{
  name = "table1",
  title = "Table 1: CIFAR-10 test error (%) of 26 2xKd Shake-Shake ResNets, 1800 epochs",
  base = {dataset = "cifar10", arch = "resnet", depth = 26, epochs = 1800, batch = 128,
          lr = 0.2, wd = 1e-4},
  cells = sweep.concat(
    --                         2x32d 2x64d 2x96d 2x112d
    row("even-even",          {4.27, 3.76, 3.58}),  -- level does not apply: "n/a"
    row("even-shake-batch",   {4.44}),
    row("shake-keep-batch",   {4.11}),
    row("shake-even-batch",   {3.47, 3.30}),
    row("shake-shake-batch",  {3.67, 3.07}),
    row("even-shake-image",   {4.11}),
    row("shake-keep-image",   {4.09}),
    row("shake-even-image",   {3.47, 3.20}),
    -- 2.82 (2x112d) is not in the Shake-Shake paper: it is the baseline
    -- Shake-Shake 26 2x112d of the AutoAugment paper (Cubuk et al. 2018).
    row("shake-shake-image",  {3.55, 2.98, 2.86, 2.82})
  ),
  repeats = function(c) return c.width == 96 and 5 or 3 end,
  label = function(c) return sweep.mode_name(c) .. " " .. sweep.net_name(c) end,
  layout = {row = sweep.mode_name, col = sweep.net_name},
}
