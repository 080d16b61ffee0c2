//! The request path as tower layers, each written as one async function: what a step does before
//! the steps inside it, whether it lets the request go on, and what it does with their answer.
//! A leaf module; the relay's and the agent's stacks are built of it.
//!
//! tower's own layers are structs with a hand-written future each; a step is the same `Layer`
//! and `Service` with the boilerplate written once here, so each step reads as the rule it is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Layer, Service};

/// What a request path carries, one per side.
pub trait Path: 'static {
    /// What the path carries in.
    type Request: Send + 'static;
    /// What it answers.
    type Response: Send + 'static;
    /// Why it refuses: one typed error per side.
    type Error: Send + 'static;
}

/// One step of a request path.
pub trait Step: Clone + Send + Sync + 'static {
    /// The path it belongs to.
    type Path: Path;

    /// Handles `req`, passing it on to `next` (the steps inside this one) or not.
    fn run(self, req: Req<Self>, next: Next<Self>) -> impl Future<Output = Result<Resp<Self>, Error<Self>>> + Send;
}

/// A step's request type.
pub type Req<T> = <<T as Step>::Path as Path>::Request;
/// A step's response type.
pub type Resp<T> = <<T as Step>::Path as Path>::Response;
/// A step's error type.
pub type Error<T> = <<T as Step>::Path as Path>::Error;

/// The steps inside the current one, ready for one request. Type-erased (a boxed call) because
/// a step generic over the service inside it cannot name that service's bounds in terms of its
/// own request type without the compiler losing them.
pub struct Next<T: Step>(Box<NextCall<T>>);

/// The call `Next` makes.
type NextCall<T> = dyn FnOnce(Req<T>) -> StepFuture<Resp<T>, Error<T>> + Send;

impl<T: Step> Next<T> {
    /// Passes the request on.
    pub fn run(self, req: Req<T>) -> StepFuture<Resp<T>, Error<T>> {
        (self.0)(req)
    }
}

/// A step as a tower layer.
#[derive(Clone)]
pub struct StepLayer<T>(pub T);

impl<T: Step, S> Layer<S> for StepLayer<T> {
    type Service = Stepped<T, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stepped {
            step: self.0.clone(),
            inner,
        }
    }
}

/// A step around the service inside it.
#[derive(Clone)]
pub struct Stepped<T, S> {
    step: T,
    inner: S,
}

/// The future every step's service returns.
pub type StepFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<T, S> Service<Req<T>> for Stepped<T, S>
where
    T: Step,
    S: Service<Req<T>, Response = Resp<T>, Error = Error<T>> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Resp<T>;
    type Error = Error<T>;
    type Future = StepFuture<Resp<T>, Error<T>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req<T>) -> Self::Future {
        // The inner service that was made ready goes with this request; its clone waits for the
        // next one (tower's usual hand-over).
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        let next = Next(Box::new(move |req| {
            let mut ready = ready;
            Box::pin(ready.call(req)) as StepFuture<_, _>
        }));
        Box::pin(self.step.clone().run(req, next))
    }
}

#[cfg(test)]
mod tests {
    use tower::ServiceBuilder;

    use super::*;

    /// Appends its letter on the way in, refuses "stop", and uppercases the answer on the way out.
    #[derive(Clone)]
    struct Mark(char);

    /// A path of strings.
    struct Strings;

    impl Path for Strings {
        type Request = String;
        type Response = String;
        type Error = String;
    }

    impl Step for Mark {
        type Path = Strings;

        async fn run(self, mut req: String, next: Next<Self>) -> Result<String, String> {
            if req == "stop" {
                return Err(format!("{} refused", self.0));
            }
            req.push(self.0);
            next.run(req).await.map(|answer| answer.to_uppercase())
        }
    }

    #[derive(Clone)]
    struct Echo;

    impl Service<String> for Echo {
        type Response = String;
        type Error = String;
        type Future = std::future::Ready<Result<String, String>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), String>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: String) -> Self::Future {
            std::future::ready(Ok(format!("echo {req}")))
        }
    }

    async fn call<S: Service<String, Response = String, Error = String>>(
        mut service: S,
        req: String,
    ) -> Result<String, String> {
        std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
        service.call(req).await
    }

    #[tokio::test]
    async fn steps_run_outside_in_and_a_refusal_stops_the_path() {
        let stack = ServiceBuilder::new()
            .layer(StepLayer(Mark('a')))
            .layer(StepLayer(Mark('b')))
            .service(Echo);
        assert_eq!(call(stack.clone(), "x".to_owned()).await, Ok("ECHO XAB".to_owned()));
        assert_eq!(call(stack, "stop".to_owned()).await, Err("a refused".to_owned()));
    }
}
