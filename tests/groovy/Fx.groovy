import javafx.application.Platform

import java.util.concurrent.CountDownLatch
import java.util.concurrent.TimeUnit

/** For the Groovy check scripts: steps run on the JavaFX thread, and waits for what the panel does later. */
class Fx {
    static void start() {
        CountDownLatch started = new CountDownLatch(1)
        Platform.startup({ started.countDown() } as Runnable)
        started.await(30, TimeUnit.SECONDS)
    }

    /** The step's result, computed on the JavaFX thread; its exception is thrown here. */
    static Object run(Closure step) {
        CountDownLatch done = new CountDownLatch(1)
        Object result = null
        Throwable failure = null
        Platform.runLater({
            try {
                result = step.call()
            } catch (Throwable t) {
                failure = t
            } finally {
                done.countDown()
            }
        } as Runnable)
        if (!done.await(60, TimeUnit.SECONDS)) {
            throw new AssertionError('the JavaFX thread did not run a step within 60 s')
        }
        if (failure != null) {
            throw failure
        }
        return result
    }

    /** Wait until `condition` (run on the JavaFX thread) holds; fail naming `what` after `seconds`. */
    static void waitFor(String what, double seconds, Closure condition) {
        long deadline = System.nanoTime() + (long) (seconds * 1e9)
        while (!run(condition)) {
            if (System.nanoTime() > deadline) {
                throw new AssertionError("timed out waiting for ${what}")
            }
            Thread.sleep(50)
        }
    }

    static void exit(int status) {
        Platform.exit()
        System.exit(status)
    }
}
