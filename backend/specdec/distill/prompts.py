"""Built-in prompt sets: TRAIN (the distillation corpus is sampled from these) and HELDOUT
(acceptance is measured on these). The two are disjoint by construction: different topics and
different wordings; ``tests/test_distill.py`` checks that no string appears in both.

TRAIN = hand-written instructions across many kinds of request, plus templated ones (each topic
paired with a rotating subset of task templates) for breadth.
"""
from __future__ import annotations

_HANDWRITTEN = [
    # coding
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain the difference between a list and a tuple in Python.",
    "How do I reverse a linked list? Show code in Python.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "What does the `yield` keyword do in Python?",
    "Write a bash one-liner that counts the lines in every .txt file in a folder.",
    "Explain what a race condition is and how a mutex prevents it.",
    "Write a JavaScript function that debounces another function.",
    "What is the time complexity of binary search, and why?",
    "Fix the bug: `for i in range(len(xs)): if xs[i] == x: return True return False` should return False only after the loop.",
    "Explain recursion with a simple example.",
    "Write a Python class for a stack with push, pop and peek.",
    "What is the difference between git merge and git rebase?",
    "How do I read a CSV file with pandas and compute the mean of one column?",
    "Write a function that returns the n-th Fibonacci number iteratively.",
    "Explain what an API is to someone who does not program.",
    "What is a hash table and why are lookups fast?",
    "Write a regular expression that matches an email address, and explain each part.",
    "How does garbage collection work in Java, in simple terms?",
    "Write a C function that swaps two integers through pointers.",
    "What are HTTP status codes 200, 404 and 500?",
    "Explain object-oriented programming in three paragraphs.",
    "Write unit tests for a function that adds two numbers.",
    "What is the difference between a process and a thread?",
    "Convert this loop into a list comprehension: result = []; for x in data: if x > 0: result.append(x * 2)",
    # math and reasoning
    "A train travels 120 km in 1.5 hours. What is its average speed?",
    "What is 15% of 240? Show your work.",
    "Solve for x: 3x + 7 = 22.",
    "Explain the Pythagorean theorem with an example.",
    "If I save $50 a month, how much will I have after three years without interest?",
    "What is a prime number? List the primes below 30.",
    "Explain what a derivative measures, without formulas.",
    "A rectangle has a perimeter of 30 cm and a length of 9 cm. What is its width?",
    "What is the probability of rolling two sixes with two dice?",
    "Explain the difference between mean, median and mode.",
    "How many seconds are there in a day? Show the calculation.",
    "Simplify the fraction 84/126.",
    "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies? Explain.",
    "Three friends split a bill of $87 equally. How much does each pay?",
    "What is the sum of the interior angles of a hexagon?",
    "Explain compound interest with a short example.",
    "Convert 72 degrees Fahrenheit to Celsius.",
    "What comes next in the sequence 2, 6, 12, 20, 30?",
    # science
    "Explain photosynthesis in simple terms.",
    "Why is the sky blue?",
    "What causes the seasons on Earth?",
    "How do vaccines train the immune system?",
    "What is the difference between weather and climate?",
    "Explain how a rainbow forms.",
    "What is DNA and what does it do?",
    "Why do objects float or sink in water?",
    "How does a refrigerator keep food cold?",
    "What is a black hole?",
    "Explain the water cycle step by step.",
    "How do plants absorb water from the soil?",
    "What is the difference between a virus and a bacterium?",
    "Why does ice float on water?",
    "How does the heart pump blood through the body?",
    "What are the three states of matter? Give an example of each.",
    "Explain Newton's three laws of motion.",
    "What is an atom made of?",
    "How do earthquakes happen?",
    "Why do we have different time zones?",
    # history and society
    "Summarize the causes of World War I.",
    "Who was Cleopatra and why is she famous?",
    "What was the Industrial Revolution?",
    "Explain the significance of the printing press.",
    "What was the Silk Road?",
    "Describe daily life in ancient Rome.",
    "Why did the Roman Empire decline?",
    "What is democracy and where did it originate?",
    "Explain what the United Nations does.",
    "What was the Renaissance?",
    "Who were the Vikings?",
    "What is the purpose of a constitution?",
    # writing
    "Write a short story about a robot who learns to paint.",
    "Write a haiku about autumn leaves.",
    "Write a polite email asking my manager for a day off next Friday.",
    "Write a product description for a reusable water bottle.",
    "Write a limerick about a cat who loves cheese.",
    "Write the opening paragraph of a mystery novel set in a lighthouse.",
    "Write a thank-you note to a teacher.",
    "Write a short speech for a friend's wedding.",
    "Write a cover letter for a junior data analyst position.",
    "Write a dialogue between a customer and a barista.",
    "Write a bedtime story about a sleepy dragon.",
    "Write a tweet announcing the opening of a new bakery.",
    "Write a poem about the ocean at night.",
    "Write a complaint letter about a delayed package, staying polite.",
    "Describe a sunset over the mountains in vivid language.",
    "Write a short fable with a moral about patience.",
    "Write a motivational message for someone starting a new job.",
    "Write an apology message for missing a friend's birthday party.",
    # advice and everyday life
    "How can I improve my sleep?",
    "Give me five tips for studying effectively.",
    "How do I prepare for a job interview?",
    "What are some ways to reduce stress at work?",
    "How can I save money on groceries?",
    "How do I start running if I have never exercised?",
    "What should I pack for a weekend camping trip?",
    "How do I make a budget?",
    "How can I be more productive when working from home?",
    "What are good habits for keeping a clean house?",
    "How do I politely say no to extra work?",
    "How can I learn a new language quickly?",
    "What should I consider when buying a used car?",
    "How do I take care of a houseplant?",
    "How do I write a good resume?",
    "How can I make new friends in a new city?",
    "What are healthy snacks for the afternoon?",
    "How do I deal with procrastination?",
    # cooking
    "Give me a simple recipe for pancakes.",
    "How do I cook rice on the stove?",
    "What can I make for dinner with eggs, spinach and cheese?",
    "How do I make a basic tomato sauce?",
    "What is the difference between baking soda and baking powder?",
    "Give me a recipe for a vegetarian chili.",
    "How long should I boil an egg for a runny yolk?",
    "How do I make bread at home?",
    # travel and geography
    "What are the top things to see in Paris?",
    "Plan a three-day trip to Tokyo.",
    "What is the capital of Australia, and why is it not Sydney?",
    "Which are the longest rivers in the world?",
    "What should I know before visiting Iceland?",
    "Describe the climate of the Sahara desert.",
    "Give me tips for traveling on a budget in Europe.",
    "What languages are spoken in Switzerland?",
    # business and economics
    "What is inflation and why does it happen?",
    "Explain supply and demand with an example.",
    "What is the difference between a stock and a bond?",
    "How do I write a simple business plan?",
    "What is a startup and how is it funded?",
    "Explain what a credit score is.",
    "What are the pros and cons of working freelance?",
    "How does a bank make money?",
    # language
    "What is the difference between 'affect' and 'effect'?",
    "Translate 'Good morning, how are you?' into Spanish and French.",
    "Correct the grammar: 'Me and him goes to the store yesterday.'",
    "What is a metaphor? Give three examples.",
    "Explain when to use a semicolon.",
    "Give me five synonyms for 'happy'.",
    "What does the idiom 'break the ice' mean?",
    "Rewrite this sentence to be more formal: 'Hey, can you send me that file real quick?'",
    # classification, summarization, extraction
    "Classify the sentiment of this review: 'The food was cold and the waiter ignored us.'",
    "Summarize in one sentence: 'The city council voted to expand the bike lane network, citing safety data and rising numbers of cyclists, though some shop owners worry about parking.'",
    "Extract the names and dates: 'Maria joined the company on 3 March 2019, and Tom followed on 12 June 2020.'",
    "Is this sentence a fact or an opinion: 'Chocolate ice cream is the best flavor.'?",
    "List the main ingredients in a Caesar salad.",
    "Put these in chronological order: the Moon landing, the invention of the telephone, the fall of the Berlin Wall.",
    "Give a title to this paragraph: 'Bees pollinate a third of the crops we eat, yet their numbers are falling due to pesticides and habitat loss.'",
    # conversation
    "Hi! How are you today?",
    "Tell me a joke.",
    "What is your favorite book, and why?",
    "Can you recommend a good movie for a rainy evening?",
    "I'm feeling a bit bored. Any ideas?",
    "What would you do with a free afternoon?",
    "Tell me a fun fact about animals.",
    "What are some good questions to ask on a first date?",
    "Who are you?",
    "What can you help me with?",
]

_TOPICS = [
    "volcanoes", "the stock market", "machine learning", "honeybees", "the French Revolution", "solar energy",
    "chess", "the human brain", "electric cars", "coffee", "the Moon", "recycling", "jazz music", "the internet",
    "dinosaurs", "meditation", "the Amazon rainforest", "cryptography", "the Olympic Games", "photography",
    "gardening", "the immune system", "ancient Egypt", "renewable energy", "social media", "penguins",
    "the printing press", "video games", "climate change", "yoga", "the piano", "coral reefs", "airplanes",
    "the Great Wall of China", "chocolate", "public libraries", "robots", "sleep", "the periodic table", "tea",
    "bicycles", "earthquakes", "the Mars rovers", "friendship", "smartphones", "the Middle Ages",
]

_TEMPLATES = [
    "Explain {t} to a ten-year-old.",
    "Write a short poem about {t}.",
    "What are three common misconceptions about {t}?",
    "Give me five interesting facts about {t}.",
    "Write a short paragraph introducing {t} for a school report.",
    "What is the history of {t} in a few sentences?",
    "List the pros and cons of {t}.",
    "Write a quiz with three questions about {t}, with answers.",
    "How would you explain the importance of {t} to a skeptical friend?",
    "Write a short story in which {t} plays an important role.",
    "What are good books or resources to learn about {t}?",
    "Summarize the most important things to know about {t}.",
]
_TEMPLATES_PER_TOPIC = 6


def _templated() -> list[str]:
    out = []
    for i, topic in enumerate(_TOPICS):
        for j in range(_TEMPLATES_PER_TOPIC):
            out.append(_TEMPLATES[(i * 5 + j) % len(_TEMPLATES)].format(t=topic))
    return out


TRAIN_PROMPTS: list[str] = _HANDWRITTEN + _templated()

HELDOUT_PROMPTS: list[str] = [
    "Describe how a compass works and why it points north.",
    "Write a Python function that merges two sorted lists into one sorted list.",
    "What should a beginner know before adopting a dog?",
    "Write a four-line poem about city rain.",
    "Explain the difference between RAM and storage in a computer.",
    "A shop sells pens at 3 for $2. How much do 12 pens cost?",
    "What were the main achievements of the Maya civilization?",
    "Give me a recipe for a quick vegetable stir-fry.",
    "How can I stay focused while reading long documents?",
    "Write a short letter inviting neighbors to a street party.",
    "Why do leaves change color in the fall?",
    "Explain what a neural network is in plain words.",
    "What are the benefits of learning to play a musical instrument?",
    "Write a JavaScript function that returns the largest number in an array.",
    "How do tides work?",
    "Suggest a weekly workout plan for a busy parent.",
    "What is the difference between an alligator and a crocodile?",
    "Write a short scene where two old friends meet at a train station.",
    "How do I change a flat tire?",
    "Explain what the greenhouse effect is.",
    "What are some tips for public speaking?",
    "Write a SQL statement that deletes duplicate rows from a table named users.",
    "What causes thunder and lightning?",
    "Describe the rules of soccer briefly.",
    "Give me ideas for a ten-year-old's birthday party.",
    "What is the role of mitochondria in a cell?",
    "Write an encouraging note to a student before an exam.",
    "How does a credit card differ from a debit card?",
    "Explain how a bill becomes a law in simple terms.",
    "What is 7 times 8, minus 13, divided by 3?",
    "Tell me about the life of Marie Curie.",
    "How do I brew a good cup of pour-over coffee?",
    "What are the main parts of a flower and what do they do?",
    "Write a short review of an imaginary restaurant called The Blue Fig.",
    "How can I reduce my household's plastic waste?",
    "What are the planets of the solar system, in order?",
    "Explain the idea behind the theory of evolution.",
    "Write a Python script that prints the multiplication table from 1 to 9.",
    "What are good strategies for negotiating a salary?",
    "Describe the taste of a ripe mango to someone who has never had one.",
    "How do submarines dive and surface?",
    "What is the difference between a simile and a metaphor?",
    "Write a short motivational speech for a football team at halftime.",
    "Why is exercise good for mental health?",
    "How do I set up a simple home aquarium?",
    "Explain how the internet routes a message from one computer to another.",
    "What are some polite ways to end a phone call?",
    "Write a riddle and give its answer.",
    "What happened during the first Moon landing?",
    "How do glaciers shape the landscape?",
    "Give me a packing list for a beach holiday.",
    "What is the difference between renting and buying a home?",
    "Explain how a microwave oven heats food.",
    "Write a short biography of a fictional inventor.",
    "How do birds know where to migrate?",
    "What are the basic rules of good email etiquette?",
    "Write a function in C that computes the factorial of a number.",
    "What makes a good team leader?",
    "Describe a typical breakfast in Japan.",
    "How does a bicycle stay upright when moving?",
    "What are the symptoms of dehydration and how can it be prevented?",
    "Write a dialogue between a teacher and a curious student about stars.",
    "Why are wetlands important for wildlife?",
    "Explain how to calculate the area of a circle.",
]


# --- templated prompts in bulk (``synth_prompts``): code, maths, multilingual, everyday chat ---------
_LANGS = ["Python", "JavaScript", "TypeScript", "C", "C++", "Java", "Go", "Rust", "Ruby", "Bash", "Kotlin", "C#"]
_CODE_TASKS = [
    "reverses a string", "counts the vowels in a string", "checks whether a number is even", "removes duplicates "
    "from a list", "checks whether two strings are anagrams", "converts Celsius to Fahrenheit", "sums the digits of "
    "a number", "finds the second largest number in a list", "flattens a nested list", "counts word frequencies in "
    "a text", "returns the n-th prime number", "checks whether a year is a leap year", "capitalizes every word of a "
    "sentence", "computes the greatest common divisor of two numbers", "checks whether parentheses are balanced",
    "rotates a list by k positions", "merges two dictionaries", "converts a decimal number to binary", "transposes "
    "a matrix", "computes the mean and standard deviation of a list", "finds the longest word in a sentence",
    "implements binary search", "implements insertion sort", "generates a random password", "reads a file and "
    "counts its lines", "checks whether a string is a valid IPv4 address", "computes the power set of a set",
    "returns the intersection of two lists", "converts a Roman numeral to an integer", "computes compound interest",
    "finds all pairs in a list that sum to a target", "counts the set bits of an integer", "chunks a list into "
    "pieces of size n", "checks whether a linked list has a cycle", "computes the Levenshtein distance",
    "validates an email address without regular expressions", "returns the most common element of a list",
    "computes the running total of a list", "parses a query string into a dictionary", "implements a queue with "
    "two stacks"]
_CODE_ASKS = ["Write a {lang} function that {task}.", "Show me how to write a {lang} program that {task}, with comments.",
              "In {lang}, how would you write code that {task}? Explain the time complexity.",
              "Write {lang} code that {task}, and add two test cases."]
_CODE_QUESTIONS = [
    "What is the difference between {a} and {b} in programming?", "When should I use {a} instead of {b}?"]
_CODE_PAIRS = [("a stack", "a queue"), ("an array", "a linked list"), ("recursion", "iteration"), ("a class", "an object"),
               ("an interface", "an abstract class"), ("compiling", "interpreting"), ("a map", "a set"),
               ("TCP", "UDP"), ("SQL", "NoSQL"), ("threads", "async/await"), ("unit tests", "integration tests"),
               ("git fetch", "git pull"), ("a shallow copy", "a deep copy"), ("pass by value", "pass by reference")]
_ITEMS = ["notebook", "apple", "ticket", "book", "coffee", "shirt", "pencil", "sandwich", "plant", "lamp"]
_LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Chinese", "Japanese"]
_SENTENCES = ["Where is the nearest train station?", "I would like a cup of tea, please.", "The weather is lovely today.",
              "Can you help me find my keys?", "We are going to the museum tomorrow.", "How much does this cost?",
              "My brother is a doctor.", "Please close the window.", "I have been learning to cook.",
              "What time does the shop open?", "The children are playing in the garden.", "Thank you for your help.",
              "I lost my umbrella on the bus.", "Our meeting has been moved to Thursday.", "Is there a pharmacy nearby?",
              "She reads a book every week.", "The soup is too salty.", "Could you speak more slowly, please?",
              "I am allergic to peanuts.", "The museum is closed on Mondays.", "We need more chairs for the party.",
              "He forgot his password again.", "The train was twenty minutes late.", "I prefer the blue one.",
              "Let's meet in front of the library.", "My phone battery is almost empty.", "The view from the hill "
              "is beautiful.", "Do you accept credit cards?", "It might rain this afternoon.", "I will call you back later.",
              "The baby is sleeping, please be quiet.", "Turn left at the second traffic light."]
_NATIVE = [
    "Bonjour ! Peux-tu m'expliquer comment fonctionne la photosynthèse ?", "Quels sont les avantages du vélo en ville ?",
    "Écris un court poème sur la mer.", "Comment préparer une bonne soupe à l'oignon ?",
    "¿Cuáles son los planetas del sistema solar?", "Escribe una historia corta sobre un gato curioso.",
    "¿Cómo puedo mejorar mi concentración al estudiar?", "Explica qué es la inflación en pocas palabras.",
    "Was ist der Unterschied zwischen Wetter und Klima?", "Schreibe eine kurze E-Mail an einen Kollegen.",
    "Wie funktioniert ein Kühlschrank?", "Gib mir drei Tipps zum Sparen.",
    "Qual è la capitale dell'Australia?", "Scrivi una breve ricetta per la pasta al pomodoro.",
    "Como faço para aprender a programar?", "Quais são os benefícios de beber água?",
    "Wat zijn de voordelen van fietsen?", "请用简单的语言解释什么是人工智能。", "写一首关于春天的短诗。",
    "日本の有名な観光地を教えてください。", "健康的な朝ごはんのアイデアを教えて。",
    "Привет! Расскажи, как работает интернет.", "Hur lagar man pannkakor?"]
_CHAT = ["Can you give me advice about {t}?", "I'm writing an essay on {t}. Where should I start?",
         "Tell me something surprising about {t}.", "Explain {t} like I'm a beginner, in five sentences.",
         "What questions should I ask an expert on {t}?", "Write a short dialogue between two friends about {t}.",
         "Summarize the history of {t} in a paragraph.", "Give me a step-by-step plan to learn about {t}."]
_CHAT_TOPICS = ["bread baking", "birdwatching", "personal finance", "marathon training", "electric guitars",
                "bee keeping", "urban planning", "3D printing", "board games", "sailing", "composting", "astronomy",
                "origami", "first aid", "wine tasting", "rock climbing", "podcasting", "knitting", "stamps",
                "the Roman roads", "tea ceremonies", "desert ecosystems", "sign language", "weather forecasting"]


def _math_prompt(r) -> str:
    a, b, c = r.randint(2, 99), r.randint(2, 99), r.randint(100, 999)
    kind = r.randrange(10)
    if kind == 0:
        return f"What is {a} + {c}? Show your work."
    if kind == 1:
        return f"Calculate {a} times {b}, step by step."
    if kind == 2:
        return f"What is {r.choice([5, 10, 12, 15, 20, 25, 30, 40])}% of {c}?"
    if kind == 3:
        return f"Solve for x: {a}x + {b} = {a * r.randint(2, 20) + b}."
    if kind == 4:
        return f"A {r.choice(_ITEMS)} costs ${a}. How much do {r.randint(3, 12)} of them cost?"
    if kind == 5:
        return f"Convert {a} degrees Celsius to Fahrenheit and explain the formula."
    if kind == 6:
        return f"What is the area and the perimeter of a rectangle {a} cm long and {b} cm wide?"
    if kind == 7:
        return f"Is {r.choice([c, c + 1, 2 * c + 1])} a prime number? Explain how you checked."
    if kind == 8:
        return f"A car travels at {a + 20} km/h for {r.randint(2, 6)} hours. How far does it go?"
    xs = [r.randint(1, 50) for _ in range(r.randint(4, 7))]
    return f"What are the mean and the median of {', '.join(map(str, xs))}?"


def synthetic_prompts(n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct templated prompts, a seeded mix of code (40 %), maths (25 %), multilingual
    (15 %) and everyday chat (20 %); never one of the held-out prompts."""
    import random
    r = random.Random(seed * 977 + 13)
    out: dict[str, None] = {}
    held = set(HELDOUT_PROMPTS)
    tries = 0
    while len(out) < n and tries < 20 * n + 100:
        tries += 1
        u = r.random()
        if u < 0.34:
            p = r.choice(_CODE_ASKS).format(lang=r.choice(_LANGS), task=r.choice(_CODE_TASKS))
        elif u < 0.40:
            a, b = r.choice(_CODE_PAIRS)
            p = r.choice(_CODE_QUESTIONS).format(a=a, b=b)
        elif u < 0.65:
            p = _math_prompt(r)
        elif u < 0.74:
            p = f"Translate '{r.choice(_SENTENCES)}' into {r.choice(_LANGUAGES)}."
        elif u < 0.80:
            p = r.choice(_NATIVE)
        else:
            p = r.choice(_CHAT).format(t=r.choice(_CHAT_TOPICS + _TOPICS))
        if p not in held:
            out[p] = None
    return list(out)
