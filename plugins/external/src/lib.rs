//! inpaint-external-stages: plugin stages that delegate the decision to a program the operator
//! writes in any language — over HTTP or over a subprocess's stdin/stdout.
