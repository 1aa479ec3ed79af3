// The autograd rule of multiply, registered at the Autograd key for every
// device. y = x M^T + bias, so dL/dx = dL/dy M (through the dense M, which
// is exact, at the cost of a dense temporary) and dL/dbias = dL/dy summed
// over the batch; the stored values and scales have no gradient (training
// is done on the dense weight, then compressed).
//
// Why in C++: a rule registered from Python (torch.library.register_autograd)
// is a Python function that every call passes through, with or without
// gradients: ~17 us a call, which eager prefill (hundreds of layer calls,
// each a few tens of us of host time) and small CPU models notice.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace macko {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor call_multiply(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                         int64_t rows, int64_t cols, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& scales) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("macko_spmv::multiply", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                               int64_t, const at::Tensor&, const std::optional<at::Tensor>&,
                                               const std::optional<at::Tensor>&)>();
  return op.call(values, deltas, row_indices, rows, cols, x, bias, scales);
}

at::Tensor call_decompress(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                           int64_t rows, int64_t cols, const std::optional<at::Tensor>& scales) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("macko_spmv::decompress", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                               int64_t, const std::optional<at::Tensor>&)>();
  return op.call(values, deltas, row_indices, rows, cols, scales);
}

// backward returns a gradient per argument of forward, by its position in
// multiply's schema; needs_input_grad counts only the tensor arguments
// given (an absent bias or scales has no edge).
constexpr int kX = 5, kBias = 6, kArguments = 8;
constexpr int kValuesEdge = 0, kXEdge = 3;

class MultiplyFunction : public torch::autograd::Function<MultiplyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& values, const at::Tensor& deltas,
                            const at::Tensor& row_indices, int64_t rows, int64_t cols, const at::Tensor& x,
                            const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& scales) {
    const bool has_scales = scales.has_value() && scales->defined();
    ctx->save_for_backward({values, deltas, row_indices, has_scales ? *scales : at::Tensor()});
    ctx->saved_data["rows"] = rows;
    ctx->saved_data["cols"] = cols;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["has_scales"] = has_scales;
    // Function::apply turns gradients off but leaves the Autograd key on:
    // below it, the call goes to the device kernel, not back here.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_multiply(values, deltas, row_indices, rows, cols, x, bias, scales);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    const bool has_scales = ctx->saved_data["has_scales"].toBool();
    const int bias_edge = kXEdge + 1, scales_edge = kXEdge + 1 + (has_bias ? 1 : 0);
    const bool wants_matrix_grad =
        ctx->needs_input_grad(kValuesEdge) || (has_scales && ctx->needs_input_grad(scales_edge));
    TORCH_CHECK_NOT_IMPLEMENTED(!wants_matrix_grad,
                                "macko_spmv.multiply has no gradient with respect to the matrix's values or scales; "
                                "train the dense weight and compress it afterwards");
    const at::Tensor& grad_y = grad_outputs[0];
    variable_list grads(kArguments);
    if (ctx->needs_input_grad(kXEdge)) {
      const variable_list saved = ctx->get_saved_variables();
      const std::optional<at::Tensor> scales = has_scales ? std::optional<at::Tensor>(saved[3]) : std::nullopt;
      const at::Tensor dense = call_decompress(saved[0], saved[1], saved[2], ctx->saved_data["rows"].toInt(),
                                               ctx->saved_data["cols"].toInt(), scales);
      grads[kX] = at::matmul(grad_y, dense);
    }
    if (has_bias && ctx->needs_input_grad(bias_edge)) {
      grads[kBias] = grad_y.reshape({-1, grad_y.size(-1)}).sum(0);
    }
    return grads;
  }
};

at::Tensor multiply_autograd(const at::Tensor& values, const at::Tensor& deltas, const at::Tensor& row_indices,
                             int64_t rows, int64_t cols, const at::Tensor& x, const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& scales) {
  const auto requires_grad = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->requires_grad(); };
  if (!at::GradMode::is_enabled() ||
      !(values.requires_grad() || x.requires_grad() || requires_grad(bias) || requires_grad(scales))) {
    // No graph to record (inference, or no input that wants a gradient):
    // straight to the device kernel, without a graph node.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    return call_multiply(values, deltas, row_indices, rows, cols, x, bias, scales);
  }
  return MultiplyFunction::apply(values, deltas, row_indices, rows, cols, x, bias, scales);
}

}  // namespace

TORCH_LIBRARY_IMPL(macko_spmv, Autograd, m) { m.impl("multiply", &multiply_autograd); }

}  // namespace macko
