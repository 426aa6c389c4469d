--[[
A smoke-scale demo of Table 1: the same 17 cells, rows and columns (the
paper's nine forward-backward-level modes by four widths), shrunk to run on a
2-core CPU in a few minutes with `sweep run sweeps/demo.lua --jobs 2`:

- Fashion-MNIST (installed by Debian's dataset-fashion-mnist; no download)
  instead of CIFAR-10;
- 8 2xKd networks with the paper's widths divided by 4 (32/64/96/112 ->
  8/16/24/28) instead of 26 2xKd;
- one epoch over 3,000 training images at batch 64, LR 0.2 and no
  augmentation, instead of 1800 epochs over 50,000 at batch 128 (in one
  epoch of 47 steps, crops and flips only slow learning down: 30 % test
  error without them, 36 % with, for Even-Even 8 2x16d);
- 2 repeats per cell (34 runs), so every cell has a mean and a spread.

Its errors say nothing about the paper's (no references): it shows the
whole path, from the sweep file to the report, working. Measured on the
2-core build machine (1 thread per run): 8 to 45 s per run alone (8 2x8d to
8 2x28d; evaluating the 10,000 test images is about half of it), and 4 min
15 s for all 34 runs with --jobs 2, at 28-42 % test error.
]]
local sweep = require "sweep"

-- One row of the table: a mode and the widths the paper reports it at.
local function row(mode, widths)
  local cells = {}
  for _, w in ipairs(widths) do
    local c = sweep.mode(mode)
    c.width = w
    cells[#cells + 1] = sweep.cell(c)
  end
  return cells
end

return sweep.sweep{
  name = "demo",
  title = "Smoke-scale demo of Table 1: Fashion-MNIST, 8 2xKd, 1 epoch of 3,000 images",
  base = {dataset = "fashion-mnist", arch = "resnet", depth = 8, epochs = 1, batch = 64,
          lr = 0.2, wd = 1e-4, train_subset = 3000, augment = false},
  cells = sweep.concat(
    row("even-even",          {8, 16, 24}),
    row("even-shake-batch",   {8}),
    row("shake-keep-batch",   {8}),
    row("shake-even-batch",   {8, 16}),
    row("shake-shake-batch",  {8, 16}),
    row("even-shake-image",   {8}),
    row("shake-keep-image",   {8}),
    row("shake-even-image",   {8, 16}),
    row("shake-shake-image",  {8, 16, 24, 28})
  ),
  repeats = 2,
  label = function(c) return sweep.mode_name(c) .. " " .. sweep.net_name(c) end,
  layout = {row = sweep.mode_name, col = sweep.net_name},
}
