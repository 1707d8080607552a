"""NBA history facts the built-in dataset is made from.

Written down by hand and checked against public Basketball-Reference tables (see
``tests/test_facts.py``, which re-checks them whenever a copy of those tables is available).
Seasons are named by the calendar year in which they end (2016 = the 2015-16 season); 1947-1949
are BAA seasons, which the NBA counts as its own history.
"""

# year: (champion, Finals opponent, series result with the champion's wins first)
CHAMPIONS: dict[int, tuple[str, str, str]] = {
    1947: ("Philadelphia Warriors", "Chicago Stags", "4-1"),
    1948: ("Baltimore Bullets", "Philadelphia Warriors", "4-2"),
    1949: ("Minneapolis Lakers", "Washington Capitols", "4-2"),
    1950: ("Minneapolis Lakers", "Syracuse Nationals", "4-2"),
    1951: ("Rochester Royals", "New York Knicks", "4-3"),
    1952: ("Minneapolis Lakers", "New York Knicks", "4-3"),
    1953: ("Minneapolis Lakers", "New York Knicks", "4-1"),
    1954: ("Minneapolis Lakers", "Syracuse Nationals", "4-3"),
    1955: ("Syracuse Nationals", "Fort Wayne Pistons", "4-3"),
    1956: ("Philadelphia Warriors", "Fort Wayne Pistons", "4-1"),
    1957: ("Boston Celtics", "St. Louis Hawks", "4-3"),
    1958: ("St. Louis Hawks", "Boston Celtics", "4-2"),
    1959: ("Boston Celtics", "Minneapolis Lakers", "4-0"),
    1960: ("Boston Celtics", "St. Louis Hawks", "4-3"),
    1961: ("Boston Celtics", "St. Louis Hawks", "4-1"),
    1962: ("Boston Celtics", "Los Angeles Lakers", "4-3"),
    1963: ("Boston Celtics", "Los Angeles Lakers", "4-2"),
    1964: ("Boston Celtics", "San Francisco Warriors", "4-1"),
    1965: ("Boston Celtics", "Los Angeles Lakers", "4-1"),
    1966: ("Boston Celtics", "Los Angeles Lakers", "4-3"),
    1967: ("Philadelphia 76ers", "San Francisco Warriors", "4-2"),
    1968: ("Boston Celtics", "Los Angeles Lakers", "4-2"),
    1969: ("Boston Celtics", "Los Angeles Lakers", "4-3"),
    1970: ("New York Knicks", "Los Angeles Lakers", "4-3"),
    1971: ("Milwaukee Bucks", "Baltimore Bullets", "4-0"),
    1972: ("Los Angeles Lakers", "New York Knicks", "4-1"),
    1973: ("New York Knicks", "Los Angeles Lakers", "4-1"),
    1974: ("Boston Celtics", "Milwaukee Bucks", "4-3"),
    1975: ("Golden State Warriors", "Washington Bullets", "4-0"),
    1976: ("Boston Celtics", "Phoenix Suns", "4-2"),
    1977: ("Portland Trail Blazers", "Philadelphia 76ers", "4-2"),
    1978: ("Washington Bullets", "Seattle SuperSonics", "4-3"),
    1979: ("Seattle SuperSonics", "Washington Bullets", "4-1"),
    1980: ("Los Angeles Lakers", "Philadelphia 76ers", "4-2"),
    1981: ("Boston Celtics", "Houston Rockets", "4-2"),
    1982: ("Los Angeles Lakers", "Philadelphia 76ers", "4-2"),
    1983: ("Philadelphia 76ers", "Los Angeles Lakers", "4-0"),
    1984: ("Boston Celtics", "Los Angeles Lakers", "4-3"),
    1985: ("Los Angeles Lakers", "Boston Celtics", "4-2"),
    1986: ("Boston Celtics", "Houston Rockets", "4-2"),
    1987: ("Los Angeles Lakers", "Boston Celtics", "4-2"),
    1988: ("Los Angeles Lakers", "Detroit Pistons", "4-3"),
    1989: ("Detroit Pistons", "Los Angeles Lakers", "4-0"),
    1990: ("Detroit Pistons", "Portland Trail Blazers", "4-1"),
    1991: ("Chicago Bulls", "Los Angeles Lakers", "4-1"),
    1992: ("Chicago Bulls", "Portland Trail Blazers", "4-2"),
    1993: ("Chicago Bulls", "Phoenix Suns", "4-2"),
    1994: ("Houston Rockets", "New York Knicks", "4-3"),
    1995: ("Houston Rockets", "Orlando Magic", "4-0"),
    1996: ("Chicago Bulls", "Seattle SuperSonics", "4-2"),
    1997: ("Chicago Bulls", "Utah Jazz", "4-2"),
    1998: ("Chicago Bulls", "Utah Jazz", "4-2"),
    1999: ("San Antonio Spurs", "New York Knicks", "4-1"),
    2000: ("Los Angeles Lakers", "Indiana Pacers", "4-2"),
    2001: ("Los Angeles Lakers", "Philadelphia 76ers", "4-1"),
    2002: ("Los Angeles Lakers", "New Jersey Nets", "4-0"),
    2003: ("San Antonio Spurs", "New Jersey Nets", "4-2"),
    2004: ("Detroit Pistons", "Los Angeles Lakers", "4-1"),
    2005: ("San Antonio Spurs", "Detroit Pistons", "4-3"),
    2006: ("Miami Heat", "Dallas Mavericks", "4-2"),
    2007: ("San Antonio Spurs", "Cleveland Cavaliers", "4-0"),
    2008: ("Boston Celtics", "Los Angeles Lakers", "4-2"),
    2009: ("Los Angeles Lakers", "Orlando Magic", "4-1"),
    2010: ("Los Angeles Lakers", "Boston Celtics", "4-3"),
    2011: ("Dallas Mavericks", "Miami Heat", "4-2"),
    2012: ("Miami Heat", "Oklahoma City Thunder", "4-1"),
    2013: ("Miami Heat", "San Antonio Spurs", "4-3"),
    2014: ("San Antonio Spurs", "Miami Heat", "4-1"),
    2015: ("Golden State Warriors", "Cleveland Cavaliers", "4-2"),
    2016: ("Cleveland Cavaliers", "Golden State Warriors", "4-3"),
    2017: ("Golden State Warriors", "Cleveland Cavaliers", "4-1"),
    2018: ("Golden State Warriors", "Cleveland Cavaliers", "4-0"),
    2019: ("Toronto Raptors", "Golden State Warriors", "4-2"),
    2020: ("Los Angeles Lakers", "Miami Heat", "4-2"),
    2021: ("Milwaukee Bucks", "Phoenix Suns", "4-2"),
    2022: ("Golden State Warriors", "Boston Celtics", "4-2"),
    2023: ("Denver Nuggets", "Miami Heat", "4-1"),
    2024: ("Boston Celtics", "Dallas Mavericks", "4-1"),
    2025: ("Oklahoma City Thunder", "Indiana Pacers", "4-3"),
}

# The Finals MVP award exists from 1969. 1969 (Jerry West) is the only one from the losing team.
FINALS_MVPS: dict[int, str] = {
    1969: "Jerry West", 1970: "Willis Reed", 1971: "Kareem Abdul-Jabbar", 1972: "Wilt Chamberlain",
    1973: "Willis Reed", 1974: "John Havlicek", 1975: "Rick Barry", 1976: "Jo Jo White",
    1977: "Bill Walton", 1978: "Wes Unseld", 1979: "Dennis Johnson", 1980: "Magic Johnson",
    1981: "Cedric Maxwell", 1982: "Magic Johnson", 1983: "Moses Malone", 1984: "Larry Bird",
    1985: "Kareem Abdul-Jabbar", 1986: "Larry Bird", 1987: "Magic Johnson", 1988: "James Worthy",
    1989: "Joe Dumars", 1990: "Isiah Thomas", 1991: "Michael Jordan", 1992: "Michael Jordan",
    1993: "Michael Jordan", 1994: "Hakeem Olajuwon", 1995: "Hakeem Olajuwon", 1996: "Michael Jordan",
    1997: "Michael Jordan", 1998: "Michael Jordan", 1999: "Tim Duncan", 2000: "Shaquille O'Neal",
    2001: "Shaquille O'Neal", 2002: "Shaquille O'Neal", 2003: "Tim Duncan", 2004: "Chauncey Billups",
    2005: "Tim Duncan", 2006: "Dwyane Wade", 2007: "Tony Parker", 2008: "Paul Pierce",
    2009: "Kobe Bryant", 2010: "Kobe Bryant", 2011: "Dirk Nowitzki", 2012: "LeBron James",
    2013: "LeBron James", 2014: "Kawhi Leonard", 2015: "Andre Iguodala", 2016: "LeBron James",
    2017: "Kevin Durant", 2018: "Kevin Durant", 2019: "Kawhi Leonard", 2020: "LeBron James",
    2021: "Giannis Antetokounmpo", 2022: "Stephen Curry", 2023: "Nikola Jokic", 2024: "Jaylen Brown",
    2025: "Shai Gilgeous-Alexander",
}

# Regular-season Most Valuable Player, awarded from 1956.
MVPS: dict[int, str] = {
    1956: "Bob Pettit", 1957: "Bob Cousy", 1958: "Bill Russell", 1959: "Bob Pettit",
    1960: "Wilt Chamberlain", 1961: "Bill Russell", 1962: "Bill Russell", 1963: "Bill Russell",
    1964: "Oscar Robertson", 1965: "Bill Russell", 1966: "Wilt Chamberlain", 1967: "Wilt Chamberlain",
    1968: "Wilt Chamberlain", 1969: "Wes Unseld", 1970: "Willis Reed", 1971: "Kareem Abdul-Jabbar",
    1972: "Kareem Abdul-Jabbar", 1973: "Dave Cowens", 1974: "Kareem Abdul-Jabbar", 1975: "Bob McAdoo",
    1976: "Kareem Abdul-Jabbar", 1977: "Kareem Abdul-Jabbar", 1978: "Bill Walton", 1979: "Moses Malone",
    1980: "Kareem Abdul-Jabbar", 1981: "Julius Erving", 1982: "Moses Malone", 1983: "Moses Malone",
    1984: "Larry Bird", 1985: "Larry Bird", 1986: "Larry Bird", 1987: "Magic Johnson",
    1988: "Michael Jordan", 1989: "Magic Johnson", 1990: "Magic Johnson", 1991: "Michael Jordan",
    1992: "Michael Jordan", 1993: "Charles Barkley", 1994: "Hakeem Olajuwon", 1995: "David Robinson",
    1996: "Michael Jordan", 1997: "Karl Malone", 1998: "Michael Jordan", 1999: "Karl Malone",
    2000: "Shaquille O'Neal", 2001: "Allen Iverson", 2002: "Tim Duncan", 2003: "Tim Duncan",
    2004: "Kevin Garnett", 2005: "Steve Nash", 2006: "Steve Nash", 2007: "Dirk Nowitzki",
    2008: "Kobe Bryant", 2009: "LeBron James", 2010: "LeBron James", 2011: "Derrick Rose",
    2012: "LeBron James", 2013: "LeBron James", 2014: "Kevin Durant", 2015: "Stephen Curry",
    2016: "Stephen Curry", 2017: "Russell Westbrook", 2018: "James Harden", 2019: "Giannis Antetokounmpo",
    2020: "Giannis Antetokounmpo", 2021: "Nikola Jokic", 2022: "Nikola Jokic", 2023: "Joel Embiid",
    2024: "Nikola Jokic", 2025: "Shai Gilgeous-Alexander",
}


def season_label(year: int) -> str:
    """``2016`` -> ``"2015-16"``."""
    return f"{year - 1}-{str(year)[-2:]}"


def league(year: int) -> str:
    return "BAA" if year <= 1949 else "NBA"
