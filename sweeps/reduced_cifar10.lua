--[[
Reduced CIFAR-10: 26 2x96d Shake-Shake-Image trained on 4,000 of the 50,000
training images, 17.05 % test error on the full test set.

That number is not in the Shake-Shake paper: it is the Shake-Shake baseline
of the AutoAugment paper (Cubuk et al. 2018, reduced CIFAR-10 table), whose
text does not give that baseline's recipe for this setting (epochs, LR, weight
decay). This sweep keeps the Table 1 recipe (1800 epochs, batch 128, LR 0.2,
wd 1e-4): with 4,000 images an epoch is 32 steps, so 1800 epochs is 57,600
steps, far fewer than the 703,800 of a full Table 1 run. Which 4,000 images
is fixed by subset_seed (0). Mean of 3 runs; repeat k (from 0) uses seed 1 + k.
]]
local sweep = require "sweep"

return sweep.sweep{
  name = "reduced_cifar10",
  title = "Reduced CIFAR-10 (4,000 images) test error (%) of a 26 2x96d Shake-Shake ResNet",
  base = {dataset = "cifar10", arch = "resnet", depth = 26, width = 96, epochs = 1800,
          batch = 128, lr = 0.2, wd = 1e-4, train_subset = 4000, subset_seed = 0},
  cells = {
    sweep.cell{forward = "shake", backward = "shake", level = "image", ref = 17.05},
  },
  repeats = 3,
  label = function(c) return sweep.mode_name(c) .. " " .. sweep.net_name(c) .. " 4k" end,
  layout = {row = sweep.mode_name, col = function(c) return sweep.net_name(c) .. ", 4,000 images" end},
}
