--[[
The paper's CIFAR-100 result: a 29 2x4x64d Shake ResNeXt (4 groups of 64
channels per branch in the first stage), Shake-Even-Image, 15.85 % test
error.

Recipe (the paper's): 1800 epochs of cosine-annealed SGD, batch 32 over 2
GPUs, LR 0.025, weight decay 5e-4, momentum 0.9. The paper split the batch
over 2 GPUs, so its batch-norm statistics came from 16 images each; here
they come from all 32. Mean of 3 runs; repeat k (from 0) uses seed 1 + k.
]]
local sweep = require "sweep"

return sweep.sweep{
  name = "cifar100",
  title = "CIFAR-100 test error (%) of a 29 2x4x64d Shake ResNeXt, Shake-Even-Image, 1800 epochs",
  base = {dataset = "cifar100", arch = "resnext", depth = 29, groups = 4, width = 64,
          epochs = 1800, batch = 32, lr = 0.025, wd = 5e-4},
  cells = {
    sweep.cell{forward = "shake", backward = "even", level = "image", ref = 15.85},
  },
  repeats = 3,
  label = function(c) return sweep.mode_name(c) .. " " .. sweep.net_name(c) end,
  layout = {row = sweep.mode_name, col = sweep.net_name},
}
