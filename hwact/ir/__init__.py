"""hwact's IR: torch.export ATen graphs (hwact.ir.graph) and hwact ops with integer reference semantics."""
