"""Reference solution for examples/titanic.toml: a small neural net written from scratch in torch,
as in fast.ai's lesson 5 ("Linear model and neural net from scratch").

Reads titanic.csv from the working directory, cleans it, holds out 20% for validation, trains, and
leaves `accuracy` (validation accuracy, a float) in the kernel. Uses CUDA when there is a GPU.
"""

import numpy as np
import pandas as pd
import torch

torch.manual_seed(42)
device = "cuda" if torch.cuda.is_available() else "cpu"

# -- clean ---------------------------------------------------------------------------------------
df = pd.read_csv("titanic.csv")
modes = df.mode().iloc[0]
df = df.fillna({"Age": modes["Age"], "Embarked": modes["Embarked"], "Fare": modes["Fare"]})
df["LogFare"] = np.log1p(df["Fare"])
df["Alone"] = (df["SibSp"] + df["Parch"] == 0).astype(float)
df = pd.get_dummies(df, columns=["Sex", "Pclass", "Embarked"], dtype=float)
features = ["Age", "SibSp", "Parch", "LogFare", "Alone", "Sex_male", "Sex_female",
            "Pclass_1", "Pclass_2", "Pclass_3", "Embarked_C", "Embarked_Q", "Embarked_S"]
X = torch.tensor(df[features].values, dtype=torch.float32)
X = X / X.max(dim=0).values  # every column in [0, 1]
X = torch.cat([X, torch.ones(len(X), 1)], dim=1)  # a constant column: the bias
y = torch.tensor(df["Survived"].values, dtype=torch.float32)[:, None]

# -- hold out a validation split ---------------------------------------------------------------
perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(42))
n_valid = len(X) // 5
valid_idx, train_idx = perm[:n_valid], perm[n_valid:]
X_train, y_train = X[train_idx].to(device), y[train_idx].to(device)
X_valid, y_valid = X[valid_idx].to(device), y[valid_idx].to(device)

# -- a two-layer net from scratch --------------------------------------------------------------
n_in, n_hidden = X.shape[1], 20


def init_params():
    l1 = ((torch.rand(n_in, n_hidden) - 0.5) / n_hidden).to(device).requires_grad_()
    l2 = (torch.rand(n_hidden, 1) - 0.3).to(device).requires_grad_()
    b = torch.zeros(1, device=device).requires_grad_()
    return l1, l2, b


def predict(params, x):
    l1, l2, b = params
    return torch.sigmoid(torch.relu(x @ l1) @ l2 + b)


params = init_params()
lr = 1.4
for epoch in range(300):
    loss = torch.abs(predict(params, X_train) - y_train).mean()  # the lesson's mean absolute error
    loss.backward()
    with torch.no_grad():
        for p in params:
            p -= p.grad * lr
            p.grad.zero_()

with torch.no_grad():
    accuracy = ((predict(params, X_valid) > 0.5).float() == y_valid).float().mean().item()
print(f"device: {device}, train loss {loss.item():.4f}, validation accuracy {accuracy:.4f} "
      f"({n_valid} held-out passengers)")
