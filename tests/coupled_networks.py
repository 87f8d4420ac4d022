"""Small networks with coupled channels that several tests prune."""

from torch import nn
from torch.nn import functional as F


class Residual(nn.Module):
    """stem and block.0 write into one residual stream: one coupling group named 'stem'."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.inner = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.block(x) + x
        return self.head(F.relu(self.inner(x)).mean(dim=(2, 3)))
